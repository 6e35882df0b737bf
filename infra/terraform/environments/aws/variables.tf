# Inputs of an AWS GPU cluster. `llmops provision aws` writes them to
# llmops.auto.tfvars.json; every one can also be set by hand.

variable "name" {
  description = "Cluster name: the EKS cluster, the prefix of every resource and the llmops profile name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region, e.g. us-east-1."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "kubernetes_version" {
  description = "Kubernetes minor version, e.g. \"1.34\"."
  type        = string
  default     = "1.34"

  validation {
    condition     = can(regex("^1\\.(2[89]|3[0-9])$", var.kubernetes_version))
    error_message = "kubernetes_version must be a minor version such as \"1.34\"."
  }
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the new VPC."
  type        = string
  default     = "10.0.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be a valid IPv4 CIDR block no smaller than /20."
  }
}

variable "zone_count" {
  description = "Number of availability zones of the VPC (2 or 3)."
  type        = number
  default     = 2

  validation {
    condition     = contains([2, 3], var.zone_count)
    error_message = "zone_count must be 2 or 3."
  }
}

variable "gpu_availability_zone" {
  description = "Zone of the GPU nodes and the FSx file system. Null picks the first available zone; reserved capacity must name the reservation's zone."
  type        = string
  default     = null

  validation {
    condition     = var.gpu_availability_zone == null || can(regex("^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9][a-z]$", var.gpu_availability_zone))
    error_message = "gpu_availability_zone must be a zone name such as us-east-1a."
  }

  validation {
    condition     = var.gpu_availability_zone == null || startswith(coalesce(var.gpu_availability_zone, "-"), var.region)
    error_message = "gpu_availability_zone must be a zone of var.region."
  }
}

variable "gpu_instance_type" {
  description = "GPU instance type: p5.48xlarge (8 H100), p5e/p5en.48xlarge (8 H200), p4d.24xlarge (8 A100)..."
  type        = string
  default     = "p5.48xlarge"

  validation {
    condition     = can(regex("^(p[3-9][a-z0-9-]*|g[4-9][a-z0-9-]*)\\.[0-9]*xlarge$", var.gpu_instance_type))
    error_message = "gpu_instance_type must be an NVIDIA GPU instance type of the P or G families, such as p5.48xlarge or p4d.24xlarge."
  }
}

variable "gpu_node_count" {
  description = "Number of GPU nodes."
  type        = number

  validation {
    condition     = var.gpu_node_count >= 1 && var.gpu_node_count <= 512 && floor(var.gpu_node_count) == var.gpu_node_count
    error_message = "gpu_node_count must be a whole number from 1 to 512."
  }
}

variable "gpu_ami_type" {
  description = "AMI of the GPU nodes: AL2023_x86_64_NVIDIA or BOTTLEROCKET_x86_64_NVIDIA."
  type        = string
  default     = "AL2023_x86_64_NVIDIA"

  validation {
    condition     = contains(["AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA"], var.gpu_ami_type)
    error_message = "gpu_ami_type must be AL2023_x86_64_NVIDIA or BOTTLEROCKET_x86_64_NVIDIA."
  }
}

variable "efa_enabled" {
  description = "EFA interfaces on the GPU nodes (needed for multi-node NCCL at full bandwidth)."
  type        = bool
  default     = true

  validation {
    condition     = var.efa_enabled != null
    error_message = "efa_enabled must be true or false."
  }
}

variable "capacity_reservation" {
  description = "Reserved GPU capacity: { id = \"cr-...\", type = \"capacity-block\" | \"on-demand\" }, or null for On-Demand."
  type = object({
    id   = string
    type = string
  })
  default = null

  validation {
    condition     = var.capacity_reservation == null || can(regex("^cr-[0-9a-f]{8,17}$", var.capacity_reservation.id))
    error_message = "capacity_reservation.id must be a capacity reservation ID such as cr-0123456789abcdef0."
  }

  validation {
    condition     = var.capacity_reservation == null || contains(["capacity-block", "on-demand"], try(var.capacity_reservation.type, ""))
    error_message = "capacity_reservation.type must be \"capacity-block\" or \"on-demand\"."
  }

  validation {
    condition     = var.capacity_reservation == null || var.gpu_availability_zone != null
    error_message = "capacity_reservation needs gpu_availability_zone: reserved capacity lives in one zone, and the nodes must be launched there."
  }
}

variable "system_instance_type" {
  description = "Instance type of the CPU system nodes."
  type        = string
  default     = "m7i.xlarge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.system_instance_type))
    error_message = "system_instance_type must be an EC2 instance type such as m7i.xlarge."
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

variable "endpoint_public_access_cidrs" {
  description = "CIDRs that may reach the Kubernetes API from the internet; empty keeps the API private to the VPC."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.endpoint_public_access_cidrs : can(regex("^[0-9]{1,3}(\\.[0-9]{1,3}){3}/([1-9]|[12][0-9]|3[0-2])$", c)) && can(cidrhost(c, 0))])
    error_message = "endpoint_public_access_cidrs must be IPv4 CIDRs with a prefix of 1 to 32 bits, such as 203.0.113.0/24: a /0, of 0.0.0.0 or any other address, is the whole internet; list your office or VPN ranges instead."
  }
}

variable "admin_principal_arns" {
  description = "Extra IAM roles or users given cluster-admin (the identity that applies is admin already)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.admin_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/", a))])
    error_message = "admin_principal_arns must be IAM role or user ARNs."
  }
}

variable "fsx_storage_capacity_gib" {
  description = "FSx for Lustre capacity in GiB: 1200 or a multiple of 2400."
  type        = number
  default     = 4800

  validation {
    condition     = var.fsx_storage_capacity_gib == 1200 || (var.fsx_storage_capacity_gib >= 2400 && var.fsx_storage_capacity_gib % 2400 == 0)
    error_message = "fsx_storage_capacity_gib must be 1200 or a multiple of 2400."
  }
}

variable "fsx_throughput_per_tib" {
  description = "FSx throughput per TiB in MB/s: 125, 250, 500 or 1000."
  type        = number
  default     = 250

  validation {
    condition     = contains([125, 250, 500, 1000], var.fsx_throughput_per_tib)
    error_message = "fsx_throughput_per_tib must be 125, 250, 500 or 1000."
  }
}

variable "training_namespace" {
  description = "Kubernetes namespace of llmops training pods."
  type        = string
  default     = "llmops"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.training_namespace))
    error_message = "training_namespace must be a valid Kubernetes namespace name."
  }
}

variable "training_service_account" {
  description = "Service account of llmops training pods (the only identity with bucket access)."
  type        = string
  default     = "llmops-training"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.training_service_account))
    error_message = "training_service_account must be a valid Kubernetes service account name."
  }
}

variable "force_destroy_bucket" {
  description = "Let destroy delete the bucket with its objects (datasets, checkpoints). Off by default."
  type        = bool
  default     = false

  validation {
    condition     = var.force_destroy_bucket != null
    error_message = "force_destroy_bucket must be true or false."
  }
}

variable "tags" {
  description = "Tags added to every resource (cost allocation, owner)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.tags) : length(k) <= 128 && !startswith(k, "aws:")])
    error_message = "tag keys must be at most 128 characters and must not start with aws:."
  }
}
