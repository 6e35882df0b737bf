output "cluster_id" {
  description = "OCID of the OKE cluster."
  value       = oci_containerengine_cluster.this.id
}

output "kubernetes_version" {
  description = "Kubernetes version of the control plane."
  value       = oci_containerengine_cluster.this.kubernetes_version
}

output "private_endpoint" {
  description = "Private Kubernetes API endpoint, host:port (self-managed nodes bootstrap against it)."
  value       = oci_containerengine_cluster.this.endpoints[0].private_endpoint
}

output "public_endpoint" {
  description = "Public Kubernetes API endpoint, host:port, or empty when the API is private."
  value       = oci_containerengine_cluster.this.endpoints[0].public_endpoint
}

output "ca_certificate" {
  description = "Base64 CA bundle of the Kubernetes API."
  value       = local.ca_certificate
}
