variable "cluster_name" {
  description = "EKS cluster the node group joins."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.cluster_name))
    error_message = "cluster_name must be 3-32 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "name" {
  description = "Node group name within the cluster."
  type        = string
  default     = "gpu"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}$", var.name))
    error_message = "name must be up to 31 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "vpc_id" {
  description = "VPC of the cluster (the EFA security group lives there)."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123abcd."
  }
}

variable "subnet_id" {
  description = "The one private subnet of the GPU nodes. EFA traffic does not cross zones and a cluster placement group lives in one zone, so the group gets a single subnet."
  type        = string

  validation {
    condition     = can(regex("^subnet-[0-9a-f]+$", var.subnet_id))
    error_message = "subnet_id must look like subnet-0123abcd."
  }
}

variable "node_role_arn" {
  description = "IAM role of the nodes (from the aws-eks module)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", var.node_role_arn))
    error_message = "node_role_arn must be an IAM role ARN."
  }
}

variable "cluster_security_group_id" {
  description = "EKS cluster security group; every node interface carries it so that the node reaches the control plane."
  type        = string

  validation {
    condition     = can(regex("^sg-[0-9a-f]+$", var.cluster_security_group_id))
    error_message = "cluster_security_group_id must look like sg-0123abcd."
  }
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the node root volumes."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN (arn:aws:kms:...)."
  }
}

variable "instance_type" {
  description = "GPU instance type, e.g. p5.48xlarge (8 H100, 32 EFA interfaces) or p4d.24xlarge (8 A100, 4 EFA interfaces)."
  type        = string
  default     = "p5.48xlarge"

  validation {
    condition     = can(regex("^(p[3-9][a-z0-9-]*|g[4-9][a-z0-9-]*)\\.[0-9]*xlarge$", var.instance_type))
    error_message = "instance_type must be an NVIDIA GPU instance type of the P or G families, such as p5.48xlarge, p5en.48xlarge, p4d.24xlarge or g6e.48xlarge."
  }
}

variable "node_count" {
  description = "Number of GPU nodes. The group has a fixed size: a training job needs all of them at once, so autoscaling buys nothing."
  type        = number

  validation {
    condition     = var.node_count >= 1 && var.node_count <= 512 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number from 1 to 512."
  }
}

variable "ami_type" {
  description = "EKS-optimised accelerated AMI. AL2023 needs the NVIDIA device plugin DaemonSet (installed after apply); Bottlerocket ships it."
  type        = string
  default     = "AL2023_x86_64_NVIDIA"

  validation {
    condition     = contains(["AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA"], var.ami_type)
    error_message = "ami_type must be AL2023_x86_64_NVIDIA or BOTTLEROCKET_x86_64_NVIDIA."
  }
}

variable "efa_enabled" {
  description = "Attach one EFA interface per network card (GPUDirect RDMA for NCCL through aws-ofi-nccl)."
  type        = bool
  default     = true

  validation {
    condition     = var.efa_enabled != null
    error_message = "efa_enabled must be true or false."
  }
}

variable "efa_only_secondary_interfaces" {
  description = "Make the interfaces on network cards 1..N EFA-only (no IP address). A p5 has 32 cards; EFA-only keeps it from taking 31 extra VPC addresses that NCCL never uses."
  type        = bool
  default     = true

  validation {
    condition     = var.efa_only_secondary_interfaces != null
    error_message = "efa_only_secondary_interfaces must be true or false."
  }
}

variable "capacity_reservation" {
  description = "Launch into reserved capacity: type \"capacity-block\" (EC2 Capacity Blocks for ML) or \"on-demand\" (an On-Demand Capacity Reservation), with its cr-... id. Null launches On-Demand into a new cluster placement group."
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
}

variable "volume_size_gib" {
  description = "Root volume size in GiB (NGC images are 20+ GB; AL2023 nodes also stripe local NVMe for containerd)."
  type        = number
  default     = 500

  validation {
    condition     = var.volume_size_gib >= 100 && var.volume_size_gib <= 16384
    error_message = "volume_size_gib must be between 100 and 16384."
  }
}

variable "labels" {
  description = "Extra Kubernetes labels for the GPU nodes."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.labels) : can(regex("^([a-z0-9.-]+/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$", k))])
    error_message = "labels keys must be valid Kubernetes label keys."
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
