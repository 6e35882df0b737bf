# Encryption and identity for one OKE GPU cluster: a vault with one AES key
# (Kubernetes secrets, boot volumes, File Storage, Object Storage), the
# policies that let those services use that key and nothing else, and the
# dynamic group plus policy that let self-managed GPU nodes join the cluster.
# Everything here must exist before the cluster is created.

resource "oci_kms_vault" "this" {
  compartment_id = var.compartment_id
  display_name   = "${var.name}-vault"
  vault_type     = "DEFAULT"
  freeform_tags  = var.freeform_tags
}

resource "oci_kms_key" "this" {
  compartment_id      = var.compartment_id
  display_name        = "${var.name}-key"
  management_endpoint = oci_kms_vault.this.management_endpoint
  protection_mode     = "HSM"

  key_shape {
    algorithm = "AES"
    length    = 32
  }

  # Rotate yearly (OCI auto-rotation, in days).
  is_auto_rotation_enabled = true
  auto_key_rotation_details {
    rotation_interval_in_days = 365
  }

  freeform_tags = var.freeform_tags
}

locals {
  key_condition = "where target.key.id = '${oci_kms_key.this.id}'"
  compartment   = "compartment id ${var.compartment_id}"
}

resource "oci_identity_policy" "services_use_key" {
  provider       = oci.home
  compartment_id = var.compartment_id
  name           = "${var.name}-services-use-key"
  description    = "OKE, Block Volume, File Storage and Object Storage may use the ${var.name} key, and only it"
  statements = [
    "Allow service oke to use keys in ${local.compartment} ${local.key_condition}",
    "Allow service blockstorage to use keys in ${local.compartment} ${local.key_condition}",
    "Allow service FssOc1Prod to use keys in ${local.compartment} ${local.key_condition}",
    "Allow service objectstorage-${var.region} to use keys in ${local.compartment} ${local.key_condition}",
  ]
  freeform_tags = var.freeform_tags
}

# Self-managed nodes (the RDMA cluster network) authenticate to OKE as
# instance principals; this group and policy let them register as nodes.
resource "oci_identity_dynamic_group" "gpu_nodes" {
  provider       = oci.home
  compartment_id = var.tenancy_id
  name           = "${var.name}-gpu-nodes"
  description    = "Instances of the ${var.name} compartment that may join its OKE cluster"
  matching_rule  = "ALL {instance.compartment.id = '${var.compartment_id}'}"
  freeform_tags  = var.freeform_tags
}

resource "oci_identity_policy" "gpu_nodes_join" {
  provider       = oci.home
  compartment_id = var.compartment_id
  name           = "${var.name}-gpu-nodes-join"
  description    = "Self-managed GPU nodes of ${var.name} may join the cluster"
  statements = [
    "Allow dynamic-group ${oci_identity_dynamic_group.gpu_nodes.name} to {CLUSTER_JOIN} in ${local.compartment}",
  ]
  freeform_tags = var.freeform_tags
}
