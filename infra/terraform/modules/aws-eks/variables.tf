variable "name" {
  description = "EKS cluster name; also the prefix of every resource this module creates."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the control plane and the system nodes, e.g. \"1.34\"."
  type        = string
  default     = "1.34"

  validation {
    condition     = can(regex("^1\\.(2[89]|3[0-9])$", var.kubernetes_version))
    error_message = "kubernetes_version must be a minor version such as \"1.34\" (1.28 to 1.39)."
  }
}

variable "vpc_id" {
  description = "VPC the cluster lives in."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123abcd."
  }
}

variable "subnet_ids" {
  description = "Private subnets (at least two zones) for the control plane's network interfaces and the system nodes."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "subnet_ids must list at least two subnet IDs (subnet-...)."
  }
}

variable "endpoint_public_access_cidrs" {
  description = "CIDRs allowed to reach the Kubernetes API over the internet. Empty (the default) keeps the endpoint private: reach it from inside the VPC (VPN, bastion, SSM)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.endpoint_public_access_cidrs : can(regex("^[0-9]{1,3}(\\.[0-9]{1,3}){3}/([1-9]|[12][0-9]|3[0-2])$", c)) && can(cidrhost(c, 0))])
    error_message = "endpoint_public_access_cidrs must be IPv4 CIDRs with a prefix of 1 to 32 bits, such as 203.0.113.0/24: a /0, of 0.0.0.0 or any other address, is the whole internet; list your office or VPN ranges instead."
  }
}

variable "admin_principal_arns" {
  description = "IAM users or roles given cluster-admin through EKS access entries, besides the identity that creates the cluster."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.admin_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/", a))])
    error_message = "admin_principal_arns must be IAM role or user ARNs (arn:aws:iam::123456789012:role/...)."
  }
}

variable "system_instance_type" {
  description = "Instance type of the CPU system nodes (CoreDNS, device plugins, controllers)."
  type        = string
  default     = "m7i.xlarge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.system_instance_type))
    error_message = "system_instance_type must be an EC2 instance type such as m7i.xlarge."
  }
}

variable "system_node_count" {
  description = "Number of CPU system nodes (two keep CoreDNS available during a node replacement)."
  type        = number
  default     = 2

  validation {
    condition     = var.system_node_count >= 1 && var.system_node_count <= 10 && floor(var.system_node_count) == var.system_node_count
    error_message = "system_node_count must be a whole number from 1 to 10."
  }
}

variable "node_volume_size_gib" {
  description = "Root volume size of the system nodes in GiB."
  type        = number
  default     = 100

  validation {
    condition     = var.node_volume_size_gib >= 20 && var.node_volume_size_gib <= 16384
    error_message = "node_volume_size_gib must be between 20 and 16384."
  }
}

variable "enable_ssm" {
  description = "Let nodes register with SSM Session Manager, the way to get a shell on a node without SSH keys or open ports."
  type        = bool
  default     = true

  validation {
    condition     = var.enable_ssm != null
    error_message = "enable_ssm must be true or false."
  }
}

variable "log_retention_days" {
  description = "Days to keep control-plane logs in CloudWatch Logs."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the retention periods CloudWatch Logs accepts (e.g. 30, 90, 365)."
  }
}

variable "addons" {
  description = "EKS managed add-ons to install, name => version (null for the default version of the cluster's Kubernetes release). vpc-cni and eks-pod-identity-agent are required."
  type        = map(string)
  default = {
    "vpc-cni"                = null
    "kube-proxy"             = null
    "coredns"                = null
    "eks-pod-identity-agent" = null
    "aws-fsx-csi-driver"     = null
  }

  validation {
    condition     = contains(keys(var.addons), "vpc-cni") && contains(keys(var.addons), "eks-pod-identity-agent")
    error_message = "addons must include vpc-cni (pod networking) and eks-pod-identity-agent (how pods get AWS credentials)."
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
