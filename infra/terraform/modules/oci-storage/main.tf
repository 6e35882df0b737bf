# Shared storage of one OKE GPU cluster: a File Storage file system exported
# to the worker subnet only (the shared volume for data, run directories and
# checkpoints), an Object Storage bucket for datasets and checkpoint copies,
# and a workload-identity policy that lets only the training service account
# of this cluster use that bucket.

data "oci_objectstorage_namespace" "this" {
  compartment_id = var.compartment_id
}

resource "oci_file_storage_file_system" "shared" {
  compartment_id      = var.compartment_id
  availability_domain = var.availability_domain
  display_name        = "${var.name}-shared"
  kms_key_id          = var.kms_key_id
  freeform_tags       = var.freeform_tags
}

resource "oci_file_storage_mount_target" "shared" {
  compartment_id      = var.compartment_id
  availability_domain = var.availability_domain
  subnet_id           = var.subnet_id
  nsg_ids             = [var.nsg_id]
  display_name        = "${var.name}-shared"
  freeform_tags       = var.freeform_tags
}

resource "oci_file_storage_export" "shared" {
  export_set_id  = oci_file_storage_mount_target.shared.export_set_id
  file_system_id = oci_file_storage_file_system.shared.id
  path           = "/${var.name}"

  export_options {
    source                         = var.client_cidr
    access                         = "READ_WRITE"
    identity_squash                = "ROOT" # training pods run as uid 1000; root maps to nobody
    anonymous_uid                  = 65534
    anonymous_gid                  = 65534
    require_privileged_source_port = true # mounts come from the node's kernel client
  }
}

resource "oci_objectstorage_bucket" "data" {
  compartment_id        = var.compartment_id
  namespace             = data.oci_objectstorage_namespace.this.namespace
  name                  = "${var.name}-data"
  access_type           = "NoPublicAccess"
  kms_key_id            = var.kms_key_id
  versioning            = "Enabled" # an overwritten checkpoint stays recoverable
  object_events_enabled = true      # events are emitted only; rules decide who listens
  freeform_tags         = var.freeform_tags
}

resource "oci_objectstorage_object_lifecycle_policy" "data" {
  namespace = data.oci_objectstorage_namespace.this.namespace
  bucket    = oci_objectstorage_bucket.data.name

  rules {
    name        = "expire-previous-versions"
    action      = "DELETE"
    is_enabled  = true
    target      = "previous-object-versions"
    time_amount = 30
    time_unit   = "DAYS"
  }
  rules {
    name        = "abort-stale-multipart-uploads"
    action      = "ABORT"
    is_enabled  = true
    target      = "multipart-uploads"
    time_amount = 7
    time_unit   = "DAYS"
  }
}

locals {
  workload = join(", ", [
    "request.principal.type = 'workload'",
    "request.principal.namespace = '${var.training_namespace}'",
    "request.principal.service_account = '${var.training_service_account}'",
    "request.principal.cluster_id = '${var.cluster_id}'",
  ])
}

resource "oci_identity_policy" "training_bucket" {
  provider       = oci.home
  compartment_id = var.compartment_id
  name           = "${var.name}-training-bucket"
  description    = "Training pods of ${var.name} may read and write the ${oci_objectstorage_bucket.data.name} bucket, and nothing else"
  statements = [
    "Allow any-user to read buckets in compartment id ${var.compartment_id} where all {${local.workload}, target.bucket.name = '${oci_objectstorage_bucket.data.name}'}",
    "Allow any-user to manage objects in compartment id ${var.compartment_id} where all {${local.workload}, target.bucket.name = '${oci_objectstorage_bucket.data.name}'}",
  ]
  freeform_tags = var.freeform_tags
}
