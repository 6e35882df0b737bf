terraform {
  # 1.9 for validations that read other variables.
  required_version = ">= 1.9"

  required_providers {
    oci = {
      source  = "oracle/oci"
      version = ">= 6.0, < 8.0"
    }
  }
}

# Credentials come from the OCI CLI configuration (~/.oci/config, profile
# DEFAULT or $OCI_CLI_PROFILE) or from the TF_VAR/OCI_* environment.
provider "oci" {
  region = var.region
}

# Identity resources (dynamic groups, policies) are written in the home region.
provider "oci" {
  alias  = "home"
  region = var.home_region
}
