locals {
  # Per-node size of the bare-metal GPU shapes (vCPUs = 2 x OCPUs), from the
  # OCI shape documentation; pods size their requests from it.
  shape_size = {
    "BM.GPU.H100.8"    = { vcpus = 224, memory_gib = 2048 }
    "BM.GPU.H200.8"    = { vcpus = 224, memory_gib = 3072 }
    "BM.GPU.B200.8"    = { vcpus = 256, memory_gib = 4096 }
    "BM.GPU.A100-v2.8" = { vcpus = 256, memory_gib = 2048 }
    "BM.GPU4.8"        = { vcpus = 128, memory_gib = 2048 }
  }
}

# `llmops provision` reads `cluster` (terraform output -json) to write the
# kubeconfig, the cluster profile and the post-apply Kubernetes objects.

output "cluster" {
  description = "Everything llmops needs to know about the cluster, in one object."
  value = {
    cloud                    = "oci"
    name                     = var.name
    region                   = var.region
    cluster_id               = module.oke.cluster_id
    endpoint                 = "https://${module.network.public_api ? module.oke.public_endpoint : module.oke.private_endpoint}"
    certificate_authority    = module.oke.ca_certificate
    endpoint_public          = module.network.public_api
    kubernetes_version       = module.oke.kubernetes_version
    gpu_availability_domain  = local.gpu_ad
    gpu_shape                = module.gpu_nodes.shape
    gpu_node_count           = var.gpu_node_count
    gpus_per_node            = 8
    vcpus_per_node           = local.shape_size[var.gpu_shape].vcpus
    memory_gib_per_node      = local.shape_size[var.gpu_shape].memory_gib
    gpu_node_labels          = module.gpu_nodes.labels
    gpu_node_taints          = module.gpu_nodes.taints
    training_namespace       = var.training_namespace
    training_service_account = var.training_service_account
    bucket                   = module.storage.bucket
    object_storage_namespace = module.storage.namespace
    fss = {
      file_system_id  = module.storage.file_system_id
      mount_target_ip = module.storage.mount_target_ip
      export_path     = module.storage.export_path
    }
  }
}
