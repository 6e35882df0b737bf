# An enhanced OKE cluster (needed for self-managed RDMA nodes, add-ons and
# workload identity) with secrets encrypted by our key, a managed pool of CPU
# system nodes, and the NVIDIA GPU device plugin as an OKE cluster add-on.

data "oci_identity_availability_domains" "all" {
  compartment_id = var.compartment_id
}

data "oci_containerengine_node_pool_option" "all" {
  node_pool_option_id = "all"
  compartment_id      = var.compartment_id
}

locals {
  k8s = trimprefix(var.kubernetes_version, "v")
  # Plain x86 Oracle Linux 8 OKE images for this Kubernetes version (not the
  # GPU or aarch64 variants), newest first as OKE lists them.
  oke_images = [
    for s in data.oci_containerengine_node_pool_option.all.sources : s.image_id
    if length(regexall("^Oracle-Linux-8\\.[0-9]+-[0-9.]+-[0-9]+-OKE-${replace(local.k8s, ".", "\\.")}-[0-9]+$", s.source_name)) > 0
  ]
  system_image_id = coalesce(var.system_image_id, try(local.oke_images[0], "none"))
}

resource "oci_containerengine_cluster" "this" {
  #checkov:skip=CKV2_OCI_6:PodSecurityPolicy was removed in Kubernetes 1.25 and OKE rejects it on current versions; the llmops namespace enforces Pod Security Admission labels instead (cluster/k8s)
  compartment_id     = var.compartment_id
  name               = var.name
  kubernetes_version = var.kubernetes_version
  vcn_id             = var.vcn_id
  type               = "ENHANCED_CLUSTER"
  kms_key_id         = var.kms_key_id # envelope encryption of Kubernetes secrets

  endpoint_config {
    subnet_id            = var.api_subnet_id
    nsg_ids              = [var.api_nsg_id]
    is_public_ip_enabled = var.public_api
  }

  cluster_pod_network_options {
    # Self-managed nodes (the RDMA cluster network) support flannel.
    cni_type = "FLANNEL_OVERLAY"
  }

  options {
    service_lb_subnet_ids = [var.workers_subnet_id]
    kubernetes_network_config {
      pods_cidr     = "10.244.0.0/16"
      services_cidr = "10.96.0.0/16"
    }
    persistent_volume_config {
      freeform_tags = var.freeform_tags
    }
    service_lb_config {
      freeform_tags = var.freeform_tags
    }
  }

  freeform_tags = var.freeform_tags
}

resource "oci_containerengine_node_pool" "system" {
  cluster_id         = oci_containerengine_cluster.this.id
  compartment_id     = var.compartment_id
  name               = "${var.name}-system"
  kubernetes_version = var.kubernetes_version
  node_shape         = var.system_shape

  node_shape_config {
    ocpus         = 4
    memory_in_gbs = 64
  }

  node_source_details {
    source_type             = "IMAGE"
    image_id                = local.system_image_id
    boot_volume_size_in_gbs = 100
  }

  node_config_details {
    size                                = var.system_node_count
    nsg_ids                             = [var.workers_nsg_id]
    kms_key_id                          = var.kms_key_id # boot volumes
    is_pv_encryption_in_transit_enabled = true

    dynamic "placement_configs" {
      for_each = data.oci_identity_availability_domains.all.availability_domains
      content {
        availability_domain = placement_configs.value.name
        subnet_id           = var.workers_subnet_id
      }
    }

    node_pool_pod_network_option_details {
      cni_type = "FLANNEL_OVERLAY"
    }
  }

  initial_node_labels {
    key   = "llmops.dev/node-role"
    value = "system"
  }

  freeform_tags = var.freeform_tags

  lifecycle {
    precondition {
      condition     = local.system_image_id != "none"
      error_message = "No Oracle Linux 8 OKE image was found for Kubernetes ${var.kubernetes_version}. Pick a version OKE offers in this region, or set system_image_id."
    }
  }
}

# OKE installs and upgrades the NVIDIA device plugin DaemonSet itself.
resource "oci_containerengine_addon" "nvidia_gpu_plugin" {
  cluster_id                       = oci_containerengine_cluster.this.id
  addon_name                       = "NvidiaGpuPlugin"
  remove_addon_resources_on_delete = true
}

data "oci_containerengine_cluster_kube_config" "this" {
  cluster_id = oci_containerengine_cluster.this.id
}

locals {
  kubeconfig     = yamldecode(data.oci_containerengine_cluster_kube_config.this.content)
  ca_certificate = local.kubeconfig.clusters[0].cluster["certificate-authority-data"]
}
