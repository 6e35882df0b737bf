output "cluster_network_id" {
  description = "OCID of the cluster network."
  value       = oci_core_cluster_network.gpu.id
}

output "shape" {
  description = "GPU shape of the nodes."
  value       = var.shape
}

output "labels" {
  description = "Kubernetes labels the nodes register with."
  value       = local.labels
}

output "taints" {
  description = "Kubernetes taints the nodes register with, in pod-toleration form."
  value       = [{ key = "nvidia.com/gpu", value = "true", effect = "NoSchedule" }]
}
