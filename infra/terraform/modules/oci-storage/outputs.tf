output "file_system_id" {
  description = "OCID of the File Storage file system."
  value       = oci_file_storage_file_system.shared.id
}

output "mount_target_ip" {
  description = "Private IP of the mount target."
  value       = oci_file_storage_mount_target.shared.ip_address
}

output "export_path" {
  description = "Export path of the file system on the mount target."
  value       = oci_file_storage_export.shared.path
}

output "bucket" {
  description = "Object Storage bucket for datasets and checkpoint copies."
  value       = oci_objectstorage_bucket.data.name
}

output "namespace" {
  description = "Object Storage namespace of the tenancy."
  value       = data.oci_objectstorage_namespace.this.namespace
}
