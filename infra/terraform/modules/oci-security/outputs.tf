output "kms_key_id" {
  description = "OCID of the key that encrypts secrets, volumes, File Storage and the bucket."
  value       = oci_kms_key.this.id
}

output "policy_ids" {
  description = "Policies the cluster and its storage need before they are created (depend on them)."
  value       = [oci_identity_policy.services_use_key.id, oci_identity_policy.gpu_nodes_join.id]
}
