variable "name" {
  description = "OKE cluster name; prefix of the node pool."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "compartment_id" {
  description = "OCID of the cluster's compartment."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.(compartment|tenancy)\\.", var.compartment_id))
    error_message = "compartment_id must be a compartment OCID (ocid1.compartment.oc1..xxx)."
  }
}

variable "kubernetes_version" {
  description = "OKE Kubernetes version with its patch level, e.g. \"v1.33.1\" (`oci ce cluster-options get --cluster-option-id all` lists what your region offers)."
  type        = string
  default     = "v1.33.1"

  validation {
    condition     = can(regex("^v1\\.[0-9]+\\.[0-9]+$", var.kubernetes_version))
    error_message = "kubernetes_version must look like v1.33.1."
  }
}

variable "vcn_id" {
  description = "OCID of the VCN."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.vcn\\.", var.vcn_id))
    error_message = "vcn_id must be a VCN OCID."
  }
}

variable "api_subnet_id" {
  description = "Subnet of the Kubernetes API endpoint."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.subnet\\.", var.api_subnet_id))
    error_message = "api_subnet_id must be a subnet OCID."
  }
}

variable "api_nsg_id" {
  description = "Network security group of the API endpoint."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.networksecuritygroup\\.", var.api_nsg_id))
    error_message = "api_nsg_id must be a network security group OCID."
  }
}

variable "public_api" {
  description = "Give the API endpoint a public address (its subnet must be public and its NSG must list who may connect)."
  type        = bool
  default     = false

  validation {
    condition     = var.public_api != null
    error_message = "public_api must be true or false."
  }
}

variable "workers_subnet_id" {
  description = "Subnet of the system node pool (and of service load balancers)."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.subnet\\.", var.workers_subnet_id))
    error_message = "workers_subnet_id must be a subnet OCID."
  }
}

variable "workers_nsg_id" {
  description = "Network security group of every worker node."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.networksecuritygroup\\.", var.workers_nsg_id))
    error_message = "workers_nsg_id must be a network security group OCID."
  }
}

variable "kms_key_id" {
  description = "Vault key that encrypts Kubernetes secrets and boot volumes."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.key\\.", var.kms_key_id))
    error_message = "kms_key_id must be a Vault key OCID (ocid1.key.oc1...)."
  }
}

variable "system_shape" {
  description = "Flexible VM shape of the CPU system nodes."
  type        = string
  default     = "VM.Standard.E5.Flex"

  validation {
    condition     = can(regex("^VM\\.[A-Za-z0-9.]+\\.Flex$", var.system_shape))
    error_message = "system_shape must be a flexible VM shape such as VM.Standard.E5.Flex."
  }
}

variable "system_node_count" {
  description = "Number of CPU system nodes."
  type        = number
  default     = 2

  validation {
    condition     = var.system_node_count >= 1 && var.system_node_count <= 10 && floor(var.system_node_count) == var.system_node_count
    error_message = "system_node_count must be a whole number from 1 to 10."
  }
}

variable "system_image_id" {
  description = "Image of the system nodes; null picks the newest Oracle Linux 8 OKE image for kubernetes_version."
  type        = string
  default     = null

  validation {
    condition     = var.system_image_id == null || can(regex("^ocid1\\.image\\.", var.system_image_id))
    error_message = "system_image_id must be an image OCID or null."
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
