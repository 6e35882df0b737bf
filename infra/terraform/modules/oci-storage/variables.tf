variable "name" {
  description = "Cluster name; prefix of the file system, mount target and bucket."
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
    condition     = can(regex("^ocid1\\.(compartment|tenancy)\\.[a-z0-9]+(\\.[a-z0-9-]*){1,2}\\.[a-z0-9]+$", var.compartment_id))
    error_message = "compartment_id must be a compartment OCID."
  }
}

variable "availability_domain" {
  description = "Availability domain of the file system: the GPU nodes' AD."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9]+:[A-Z0-9-]+-AD-[1-3]$", var.availability_domain))
    error_message = "availability_domain must look like Uocm:US-ASHBURN-AD-1."
  }
}

variable "subnet_id" {
  description = "Private subnet of the mount target."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.subnet\\.", var.subnet_id))
    error_message = "subnet_id must be a subnet OCID."
  }
}

variable "nsg_id" {
  description = "Network security group of the mount target (admits NFS from workers only)."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.networksecuritygroup\\.", var.nsg_id))
    error_message = "nsg_id must be a network security group OCID."
  }
}

variable "client_cidr" {
  description = "CIDR of the worker subnet; the export admits only it."
  type        = string

  validation {
    condition     = can(cidrhost(var.client_cidr, 0)) && var.client_cidr != "0.0.0.0/0"
    error_message = "client_cidr must be a valid IPv4 CIDR other than 0.0.0.0/0."
  }
}

variable "kms_key_id" {
  description = "Vault key that encrypts the file system and the bucket."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.key\\.", var.kms_key_id))
    error_message = "kms_key_id must be a Vault key OCID."
  }
}

variable "cluster_id" {
  description = "OKE cluster whose training pods get bucket access through workload identity."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.cluster\\.", var.cluster_id))
    error_message = "cluster_id must be an OKE cluster OCID."
  }
}

variable "training_namespace" {
  description = "Kubernetes namespace of the training pods."
  type        = string
  default     = "llmops"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.training_namespace))
    error_message = "training_namespace must be a valid Kubernetes namespace name."
  }
}

variable "training_service_account" {
  description = "Service account of the training pods; only it may use the bucket."
  type        = string
  default     = "llmops-training"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.training_service_account))
    error_message = "training_service_account must be a valid Kubernetes service account name."
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
