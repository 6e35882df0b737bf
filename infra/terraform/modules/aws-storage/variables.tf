variable "name" {
  description = "Cluster name; prefix of every resource and part of the bucket name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "vpc_id" {
  description = "VPC of the cluster (the FSx security group lives there)."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123abcd."
  }
}

variable "subnet_id" {
  description = "Subnet of the FSx file system: the GPU nodes' subnet, so that reads and checkpoint writes stay in their zone."
  type        = string

  validation {
    condition     = can(regex("^subnet-[0-9a-f]+$", var.subnet_id))
    error_message = "subnet_id must look like subnet-0123abcd."
  }
}

variable "client_security_group_ids" {
  description = "Security groups of the nodes that mount the file system (the EKS cluster security group)."
  type        = list(string)

  validation {
    condition     = length(var.client_security_group_ids) > 0 && alltrue([for s in var.client_security_group_ids : can(regex("^sg-[0-9a-f]+$", s))])
    error_message = "client_security_group_ids must list at least one security group ID (sg-...)."
  }
}

variable "fsx_storage_capacity_gib" {
  description = "FSx for Lustre (PERSISTENT_2) capacity in GiB: 1200, or a multiple of 2400."
  type        = number
  default     = 4800

  validation {
    condition     = var.fsx_storage_capacity_gib == 1200 || (var.fsx_storage_capacity_gib >= 2400 && var.fsx_storage_capacity_gib % 2400 == 0)
    error_message = "fsx_storage_capacity_gib must be 1200 or a multiple of 2400 (2400, 4800, 7200, ...)."
  }
}

variable "fsx_throughput_per_tib" {
  description = "FSx throughput in MB/s per TiB of storage (PERSISTENT_2: 125, 250, 500 or 1000). Checkpoint writes of large models want 500+."
  type        = number
  default     = 250

  validation {
    condition     = contains([125, 250, 500, 1000], var.fsx_throughput_per_tib)
    error_message = "fsx_throughput_per_tib must be 125, 250, 500 or 1000."
  }
}

variable "fsx_s3_sync" {
  description = "Link the file system's /s3 folder to the bucket (data repository association): bucket objects appear as files, and files written there (checkpoint copies) are exported to the bucket automatically."
  type        = bool
  default     = true

  validation {
    condition     = var.fsx_s3_sync != null
    error_message = "fsx_s3_sync must be true or false."
  }
}

variable "cluster_name" {
  description = "EKS cluster whose training pods get bucket access through Pod Identity."
  type        = string

  validation {
    condition     = length(var.cluster_name) > 0
    error_message = "cluster_name must not be empty."
  }
}

variable "training_namespace" {
  description = "Kubernetes namespace of the llmops training pods."
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

variable "force_destroy" {
  description = "Let `terraform destroy` delete a bucket that still holds objects. Off by default: datasets and checkpoints outlive clusters."
  type        = bool
  default     = false

  validation {
    condition     = var.force_destroy != null
    error_message = "force_destroy must be true or false."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.tags) : length(k) <= 128])
    error_message = "tag keys must be at most 128 characters."
  }
}
