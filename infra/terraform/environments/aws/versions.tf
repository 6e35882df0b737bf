terraform {
  # 1.9 for validations that read other variables.
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      "llmops.dev/cluster" = var.name
      "managed-by"         = "llmops-terraform"
    })
  }
}
