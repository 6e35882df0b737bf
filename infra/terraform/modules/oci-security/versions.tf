terraform {
  required_version = ">= 1.7"

  required_providers {
    oci = {
      source  = "oracle/oci"
      version = ">= 6.0, < 8.0"
      # IAM writes (dynamic groups, policies) go to the tenancy's home region.
      configuration_aliases = [oci.home]
    }
  }
}
