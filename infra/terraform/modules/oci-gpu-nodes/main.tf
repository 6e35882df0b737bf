# GPU nodes on an OCI cluster network: bare-metal GPU instances on one RDMA
# (RoCE v2) fabric, joined to OKE as self-managed nodes. OKE node pools cannot
# place instances on a cluster network, hence an instance configuration and
# an oci_core_cluster_network, as oracle-quickstart/oci-hpc-oke does.

locals {
  labels = {
    "llmops.dev/node-role"   = "gpu"
    "llmops.dev/accelerator" = "nvidia"
    "llmops.dev/rdma"        = "true"
  }
  # cloud-init: join OKE with the private API endpoint and its CA. OKE images
  # ship /etc/oke/oke-install.sh; the oci-hpc-oke Ubuntu images ship the
  # `oke` bootstrap command of the same oci-oke-node package.
  cloud_init = <<-EOT
    #!/usr/bin/env bash
    set -euo pipefail
    labels="${join(",", [for k, v in local.labels : "${k}=${v}"])}"
    taints="nvidia.com/gpu=true:NoSchedule"
    if [[ -x /etc/oke/oke-install.sh ]]; then
      bash /etc/oke/oke-install.sh \
        --apiserver-endpoint "${var.apiserver_host}" \
        --kubelet-ca-cert "${var.ca_certificate}" \
        --kubelet-extra-args "--node-labels=$labels --register-with-taints=$taints"
    else
      oke bootstrap --apiserver-host "${var.apiserver_host}" --ca "${var.ca_certificate}" \
        --kubelet-extra-args "--node-labels=$labels --register-with-taints=$taints"
    fi
  EOT
}

resource "oci_core_instance_configuration" "gpu" {
  compartment_id = var.compartment_id
  display_name   = "${var.name}-gpu"

  instance_details {
    instance_type = "compute"

    launch_details {
      compartment_id          = var.compartment_id
      availability_domain     = var.availability_domain
      shape                   = var.shape
      capacity_reservation_id = var.capacity_reservation_id

      # The RDMA plugins of the Oracle Cloud Agent configure the cluster
      # network interfaces and their authentication on first boot.
      agent_config {
        is_management_disabled = false
        is_monitoring_disabled = false
        plugins_config {
          name          = "Compute HPC RDMA Authentication"
          desired_state = "ENABLED"
        }
        plugins_config {
          name          = "Compute HPC RDMA Auto-Configuration"
          desired_state = "ENABLED"
        }
      }

      instance_options {
        are_legacy_imds_endpoints_disabled = true # IMDS v2 only
      }

      create_vnic_details {
        subnet_id        = var.subnet_id
        nsg_ids          = [var.nsg_id]
        assign_public_ip = false
      }

      source_details {
        source_type             = "image"
        image_id                = var.image_id
        boot_volume_size_in_gbs = var.boot_volume_size_gib
        kms_key_id              = var.kms_key_id
      }

      is_pv_encryption_in_transit_enabled = true

      metadata = {
        user_data = base64encode(local.cloud_init)
      }

      freeform_tags = var.freeform_tags
    }
  }

  freeform_tags = var.freeform_tags

  lifecycle {
    # A changed configuration is a new configuration; the cluster network
    # switches to it before the old one goes.
    create_before_destroy = true
  }
}

resource "oci_core_cluster_network" "gpu" {
  compartment_id = var.compartment_id
  display_name   = "${var.name}-gpu"

  instance_pools {
    instance_configuration_id = oci_core_instance_configuration.gpu.id
    size                      = var.node_count
    display_name              = "${var.name}-gpu"
  }

  placement_configuration {
    availability_domain = var.availability_domain
    primary_subnet_id   = var.subnet_id
  }

  freeform_tags = var.freeform_tags

  # First boot of bare-metal GPU shapes (firmware, RDMA configuration) is slow.
  timeouts {
    create = "2h"
    update = "2h"
  }
}
