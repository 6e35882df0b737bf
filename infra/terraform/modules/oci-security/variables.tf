variable "name" {
  description = "Cluster name; prefix of the vault, key, dynamic group and policies."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "tenancy_id" {
  description = "OCID of the tenancy (dynamic groups live at its root)."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.tenancy\\.[a-z0-9]+(\\.[a-z0-9-]*){1,2}\\.[a-z0-9]+$", var.tenancy_id))
    error_message = "tenancy_id must be a tenancy OCID (ocid1.tenancy.oc1..xxx)."
  }
}

variable "compartment_id" {
  description = "OCID of the cluster's compartment. Every instance in it may join the cluster, so give the cluster a compartment of its own."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.(compartment|tenancy)\\.[a-z0-9]+(\\.[a-z0-9-]*){1,2}\\.[a-z0-9]+$", var.compartment_id))
    error_message = "compartment_id must be a compartment OCID (ocid1.compartment.oc1..xxx)."
  }
}

variable "region" {
  description = "Region of the cluster (Object Storage's service principal is regional)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an OCI region identifier such as us-ashburn-1."
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
