output "bucket_name" {
  description = "S3 bucket for datasets and checkpoint copies."
  value       = aws_s3_bucket.data.bucket
}

output "bucket_arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.data.arn
}

output "kms_key_arn" {
  description = "Key that encrypts the bucket and the file system."
  value       = aws_kms_key.storage.arn
}

output "fsx_file_system_id" {
  description = "ID of the FSx for Lustre file system (the CSI volume handle)."
  value       = aws_fsx_lustre_file_system.shared.id
}

output "fsx_dns_name" {
  description = "DNS name clients mount the file system by."
  value       = aws_fsx_lustre_file_system.shared.dns_name
}

output "fsx_mount_name" {
  description = "Lustre mount name of the file system."
  value       = aws_fsx_lustre_file_system.shared.mount_name
}

output "fsx_storage_capacity_gib" {
  description = "Capacity of the file system in GiB (the PersistentVolume's size)."
  value       = aws_fsx_lustre_file_system.shared.storage_capacity
}

output "fsx_s3_path" {
  description = "Folder of the file system linked to the bucket, or null when not linked."
  value       = var.fsx_s3_sync ? "/s3" : null
}

output "training_role_arn" {
  description = "IAM role the training service account assumes through Pod Identity."
  value       = aws_iam_role.training.arn
}
