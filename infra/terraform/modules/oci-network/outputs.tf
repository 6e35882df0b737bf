output "vcn_id" {
  description = "OCID of the VCN."
  value       = oci_core_vcn.this.id
}

output "api_subnet_id" {
  description = "Subnet of the Kubernetes API endpoint."
  value       = oci_core_subnet.api.id
}

output "workers_subnet_id" {
  description = "Subnet of all worker nodes."
  value       = oci_core_subnet.workers.id
}

output "workers_cidr" {
  description = "CIDR of the worker subnet (File Storage exports admit it)."
  value       = local.workers_cidr
}

output "storage_subnet_id" {
  description = "Subnet of the File Storage mount target."
  value       = oci_core_subnet.storage.id
}

output "api_nsg_id" {
  description = "Network security group of the API endpoint."
  value       = oci_core_network_security_group.api.id
}

output "workers_nsg_id" {
  description = "Network security group of every worker node."
  value       = oci_core_network_security_group.workers.id
}

output "storage_nsg_id" {
  description = "Network security group of the File Storage mount target."
  value       = oci_core_network_security_group.storage.id
}

output "public_api" {
  description = "Whether the API endpoint has a public address (api_allowed_cidrs was given)."
  value       = local.public_api
}
