# `llmops provision` reads `cluster` (terraform output -json) to write the
# kubeconfig, the cluster profile and the post-apply Kubernetes objects.

output "cluster" {
  description = "Everything llmops needs to know about the cluster, in one object."
  value = {
    cloud                    = "aws"
    name                     = module.eks.cluster_name
    region                   = var.region
    endpoint                 = module.eks.cluster_endpoint
    certificate_authority    = module.eks.cluster_certificate_authority_data
    endpoint_public          = length(var.endpoint_public_access_cidrs) > 0
    kubernetes_version       = module.eks.kubernetes_version
    gpu_zone                 = local.gpu_zone
    gpu_instance_type        = module.gpu_nodes.instance_type
    gpu_node_count           = var.gpu_node_count
    gpus_per_node            = module.gpu_nodes.gpus_per_node
    efa_interfaces_per_node  = module.gpu_nodes.efa_interfaces_per_node
    vcpus_per_node           = module.gpu_nodes.vcpus_per_node
    memory_gib_per_node      = module.gpu_nodes.memory_gib_per_node
    gpu_node_labels          = module.gpu_nodes.labels
    gpu_node_taints          = module.gpu_nodes.taints
    placement_group          = module.gpu_nodes.placement_group_name
    training_namespace       = var.training_namespace
    training_service_account = var.training_service_account
    training_role_arn        = module.storage.training_role_arn
    bucket                   = module.storage.bucket_name
    fsx = {
      file_system_id = module.storage.fsx_file_system_id
      dns_name       = module.storage.fsx_dns_name
      mount_name     = module.storage.fsx_mount_name
      capacity_gib   = module.storage.fsx_storage_capacity_gib
      s3_path        = module.storage.fsx_s3_path
    }
  }
}

output "gpu_placement_group" {
  description = "Cluster placement group of the GPU nodes (null with reserved capacity)."
  value       = module.gpu_nodes.placement_group_name
}

output "vpc_id" {
  description = "VPC of the cluster (peer it, or attach a VPN, to reach a private API endpoint)."
  value       = module.network.vpc_id
}
