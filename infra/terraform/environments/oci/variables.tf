# Inputs of an OCI GPU cluster. `llmops provision oci` writes them to
# llmops.auto.tfvars.json; every one can also be set by hand.

variable "name" {
  description = "Cluster name: the OKE cluster, the prefix of every resource and the llmops profile name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "tenancy_id" {
  description = "OCID of the tenancy."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.tenancy\\.[a-z0-9]+(\\.[a-z0-9-]*){1,2}\\.[a-z0-9]+$", var.tenancy_id))
    error_message = "tenancy_id must be a tenancy OCID (ocid1.tenancy.oc1..xxx)."
  }
}

variable "compartment_id" {
  description = "OCID of the compartment of the cluster; every instance in it may join the cluster, so use one of its own."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.compartment\\.[a-z0-9]+(\\.[a-z0-9-]*){1,2}\\.[a-z0-9]+$", var.compartment_id))
    error_message = "compartment_id must be a compartment OCID (ocid1.compartment.oc1..xxx)."
  }
}

variable "region" {
  description = "Region of the cluster, e.g. us-ashburn-1."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an OCI region identifier such as us-ashburn-1."
  }
}

variable "home_region" {
  description = "Home region of the tenancy, where IAM changes are written."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}-[a-z]+-[0-9]$", var.home_region))
    error_message = "home_region must be an OCI region identifier such as us-ashburn-1."
  }
}

variable "kubernetes_version" {
  description = "OKE Kubernetes version, e.g. \"v1.33.1\"."
  type        = string
  default     = "v1.33.1"

  validation {
    condition     = can(regex("^v1\\.[0-9]+\\.[0-9]+$", var.kubernetes_version))
    error_message = "kubernetes_version must look like v1.33.1."
  }
}

variable "vcn_cidr" {
  description = "IPv4 CIDR of the new VCN."
  type        = string
  default     = "10.0.0.0/16"

  validation {
    condition     = can(cidrhost(var.vcn_cidr, 0)) && tonumber(split("/", var.vcn_cidr)[1]) <= 18
    error_message = "vcn_cidr must be a valid IPv4 CIDR block no smaller than /18."
  }
}

variable "api_allowed_cidrs" {
  description = "CIDRs that may reach the Kubernetes API from the internet; empty keeps the API private."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.api_allowed_cidrs : can(regex("^[0-9]{1,3}(\\.[0-9]{1,3}){3}/([1-9]|[12][0-9]|3[0-2])$", c)) && can(cidrhost(c, 0))])
    error_message = "api_allowed_cidrs must be IPv4 CIDRs with a prefix of 1 to 32 bits, such as 203.0.113.0/24: a /0, of 0.0.0.0 or any other address, is the whole internet; list your office or VPN ranges instead."
  }
}

variable "gpu_shape" {
  description = "Bare-metal GPU shape with RDMA cluster networking."
  type        = string
  default     = "BM.GPU.H100.8"

  validation {
    condition     = contains(["BM.GPU.H100.8", "BM.GPU.H200.8", "BM.GPU.B200.8", "BM.GPU.A100-v2.8", "BM.GPU4.8"], var.gpu_shape)
    error_message = "gpu_shape must be BM.GPU.H100.8, BM.GPU.H200.8, BM.GPU.B200.8, BM.GPU.A100-v2.8 or BM.GPU4.8."
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

variable "gpu_image_id" {
  description = "RDMA-capable GPU image (import the oci-hpc-oke Ubuntu GPU image into your tenancy)."
  type        = string

  validation {
    condition     = can(regex("^ocid1\\.image\\.[a-z0-9]+(\\.[a-z0-9-]*){1,2}\\.[a-z0-9]+$", var.gpu_image_id))
    error_message = "gpu_image_id must be an image OCID (ocid1.image.oc1...)."
  }
}

variable "gpu_availability_domain" {
  description = "Availability domain of the GPU nodes and File Storage; null picks the first AD."
  type        = string
  default     = null

  validation {
    condition     = var.gpu_availability_domain == null || can(regex("^[A-Za-z0-9]+:[A-Z0-9-]+-AD-[1-3]$", coalesce(var.gpu_availability_domain, "x:X-AD-1")))
    error_message = "gpu_availability_domain must look like Uocm:US-ASHBURN-AD-1."
  }
}

variable "capacity_reservation_id" {
  description = "Compute capacity reservation for the GPU nodes, or null."
  type        = string
  default     = null

  validation {
    condition     = var.capacity_reservation_id == null || can(regex("^ocid1\\.capacityreservation\\.[a-z0-9]+(\\.[a-z0-9-]*){1,2}\\.[a-z0-9]+$", coalesce(var.capacity_reservation_id, "ocid1.capacityreservation.oc1..a")))
    error_message = "capacity_reservation_id must be a capacity reservation OCID."
  }

  validation {
    condition     = var.capacity_reservation_id == null || var.gpu_availability_domain != null
    error_message = "capacity_reservation_id needs gpu_availability_domain: a reservation lives in one AD."
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
  description = "Service account of llmops training pods (the only workload with bucket access)."
  type        = string
  default     = "llmops-training"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.training_service_account))
    error_message = "training_service_account must be a valid Kubernetes service account name."
  }
}

variable "freeform_tags" {
  description = "Free-form tags added to every resource (cost tracking, owner)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.freeform_tags) : length(k) <= 100])
    error_message = "freeform_tags keys must be at most 100 characters."
  }
}
