variable "name" {
  description = "Name prefix for every resource (the cluster name)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "compartment_id" {
  description = "OCID of the compartment that holds the network."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.(compartment|tenancy)\\.", var.compartment_id))
    error_message = "compartment_id must be a compartment OCID (ocid1.compartment.oc1..xxx)."
  }
}

variable "cidr" {
  description = "IPv4 CIDR of the VCN. Workers take a /18 of it (RDMA bare-metal nodes and their pods)."
  type        = string
  default     = "10.0.0.0/16"

  validation {
    condition     = can(cidrhost(var.cidr, 0)) && tonumber(split("/", var.cidr)[1]) <= 18
    error_message = "cidr must be a valid IPv4 CIDR block no smaller than /18."
  }
}

variable "api_allowed_cidrs" {
  description = "CIDRs that may reach the Kubernetes API from the internet. Empty (the default) keeps the API endpoint in a private subnet."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.api_allowed_cidrs : can(regex("^[0-9]{1,3}(\\.[0-9]{1,3}){3}/([1-9]|[12][0-9]|3[0-2])$", c)) && can(cidrhost(c, 0))])
    error_message = "api_allowed_cidrs must be IPv4 CIDRs with a prefix of 1 to 32 bits, such as 203.0.113.0/24: a /0, of 0.0.0.0 or any other address, is the whole internet; list your office or VPN ranges instead."
  }
}

variable "freeform_tags" {
  description = "Free-form tags added to every resource."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.freeform_tags) : length(k) <= 100])
    error_message = "freeform_tags keys must be at most 100 characters."
  }
}
