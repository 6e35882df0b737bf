variable "name" {
  description = "Cluster name; prefix of the instance configuration and cluster network."
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
    error_message = "compartment_id must be a compartment OCID."
  }
}

variable "availability_domain" {
  description = "Availability domain of the cluster network (an RDMA fabric lives in one AD), e.g. \"Uocm:US-ASHBURN-AD-1\"."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9]+:[A-Z0-9-]+-AD-[1-3]$", var.availability_domain))
    error_message = "availability_domain must look like Uocm:US-ASHBURN-AD-1."
  }
}

variable "shape" {
  description = "Bare-metal GPU shape with RDMA cluster networking: BM.GPU.H100.8, BM.GPU.H200.8, BM.GPU.B200.8, BM.GPU.A100-v2.8, BM.GPU4.8."
  type        = string
  default     = "BM.GPU.H100.8"

  validation {
    condition     = contains(["BM.GPU.H100.8", "BM.GPU.H200.8", "BM.GPU.B200.8", "BM.GPU.A100-v2.8", "BM.GPU4.8"], var.shape)
    error_message = "shape must be an RDMA-capable bare-metal GPU shape: BM.GPU.H100.8, BM.GPU.H200.8, BM.GPU.B200.8, BM.GPU.A100-v2.8 or BM.GPU4.8."
  }
}

variable "node_count" {
  description = "Number of GPU nodes in the cluster network."
  type        = number

  validation {
    condition     = var.node_count >= 1 && var.node_count <= 512 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number from 1 to 512."
  }
}

variable "image_id" {
  description = "Image with the GPU driver, the RDMA (OFED) stack and the OKE node package, e.g. the Ubuntu image published by oracle-quickstart/oci-hpc-oke, imported into your tenancy."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.image\\.", var.image_id))
    error_message = "image_id must be an image OCID (ocid1.image.oc1...): import an RDMA GPU image first (see the README)."
  }
}

variable "capacity_reservation_id" {
  description = "Compute capacity reservation to launch into, or null."
  type        = string
  default     = null

  validation {
    condition     = var.capacity_reservation_id == null || can(regex("^ocid1\\.capacityreservation\\.", var.capacity_reservation_id))
    error_message = "capacity_reservation_id must be a capacity reservation OCID or null."
  }
}

variable "subnet_id" {
  description = "Worker subnet of the nodes' primary VNIC."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.subnet\\.", var.subnet_id))
    error_message = "subnet_id must be a subnet OCID."
  }
}

variable "nsg_id" {
  description = "Network security group of the workers."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.networksecuritygroup\\.", var.nsg_id))
    error_message = "nsg_id must be a network security group OCID."
  }
}

variable "kms_key_id" {
  description = "Vault key that encrypts the boot volumes."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.key\\.", var.kms_key_id))
    error_message = "kms_key_id must be a Vault key OCID."
  }
}

variable "apiserver_host" {
  description = "Private IP of the Kubernetes API (host part of the cluster's private endpoint)."
  type        = string

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$", var.apiserver_host))
    error_message = "apiserver_host must be an IPv4 address."
  }
}

variable "ca_certificate" {
  description = "Base64 CA bundle of the Kubernetes API."
  type        = string

  validation {
    condition     = length(var.ca_certificate) > 0
    error_message = "ca_certificate must not be empty."
  }
}

variable "boot_volume_size_gib" {
  description = "Boot volume size in GiB (container images of NGC PyTorch are 20+ GB)."
  type        = number
  default     = 500

  validation {
    condition     = var.boot_volume_size_gib >= 100 && var.boot_volume_size_gib <= 32768
    error_message = "boot_volume_size_gib must be between 100 and 32768."
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
