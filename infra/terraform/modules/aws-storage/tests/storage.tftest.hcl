# Bucket, FSx for Lustre and the training role against a mocked provider.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_region" {
    defaults = { name = "us-east-1" }
  }
  mock_resource "aws_kms_key" {
    override_during = plan
    defaults        = { arn = "arn:aws:kms:us-east-1:123456789012:key/22222222-2222-2222-2222-222222222222" }
  }
  mock_resource "aws_s3_bucket" {
    override_during = plan
    defaults        = { arn = "arn:aws:s3:::llm-test-123456789012-us-east-1", id = "llm-test-123456789012-us-east-1" }
  }
}

variables {
  name                      = "llm-test"
  vpc_id                    = "vpc-0a1b2c3d"
  subnet_id                 = "subnet-0a1b2c3d"
  client_security_group_ids = ["sg-0c1c2c3c"]
  cluster_name              = "llm-test"
}

run "bucket_is_private_versioned_encrypted_and_tls_only" {
  command = plan

  assert {
    condition     = aws_s3_bucket.data.bucket == "llm-test-123456789012-us-east-1" && !aws_s3_bucket.data.force_destroy
    error_message = "The bucket is named <cluster>-<account>-<region> and keeps its objects on destroy."
  }
  assert {
    condition = (
      aws_s3_bucket_public_access_block.data.block_public_acls &&
      aws_s3_bucket_public_access_block.data.block_public_policy &&
      aws_s3_bucket_public_access_block.data.ignore_public_acls &&
      aws_s3_bucket_public_access_block.data.restrict_public_buckets
    )
    error_message = "All four public-access blocks must be on."
  }
  assert {
    condition = alltrue([
      for r in aws_s3_bucket_server_side_encryption_configuration.data.rule :
      r.apply_server_side_encryption_by_default[0].sse_algorithm == "aws:kms" &&
      r.apply_server_side_encryption_by_default[0].kms_master_key_id == aws_kms_key.storage.arn
    ])
    error_message = "The bucket must use SSE-KMS with the storage key."
  }
  assert {
    condition     = aws_s3_bucket_versioning.data.versioning_configuration[0].status == "Enabled"
    error_message = "The bucket must be versioned."
  }
  assert {
    condition     = jsondecode(aws_s3_bucket_policy.data.policy).Statement[0].Condition.Bool["aws:SecureTransport"] == "false" && jsondecode(aws_s3_bucket_policy.data.policy).Statement[0].Effect == "Deny"
    error_message = "The bucket policy must deny requests without TLS."
  }
}

run "fsx_is_persistent_encrypted_and_lustre_only" {
  command = plan

  assert {
    condition = (
      aws_fsx_lustre_file_system.shared.deployment_type == "PERSISTENT_2" &&
      aws_fsx_lustre_file_system.shared.kms_key_id == aws_kms_key.storage.arn &&
      aws_fsx_lustre_file_system.shared.storage_capacity == 4800
    )
    error_message = "FSx must be PERSISTENT_2, encrypted with the storage key, 4800 GiB by default."
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.lustre) == 4 && alltrue([for r in aws_vpc_security_group_ingress_rule.lustre : r.cidr_ipv4 == null && r.ip_protocol == "tcp" && (r.from_port == 988 || (r.from_port == 1018 && r.to_port == 1023))])
    error_message = "FSx admits only Lustre TCP ports, from the clients' and its own security group, never a CIDR."
  }
  assert {
    condition     = aws_fsx_data_repository_association.s3[0].data_repository_path == "s3://llm-test-123456789012-us-east-1" && aws_fsx_data_repository_association.s3[0].file_system_path == "/s3"
    error_message = "The file system's /s3 folder must be linked to the bucket."
  }
  assert {
    condition     = strcontains(aws_kms_key.storage.policy, "AWSServiceRoleForFSxS3Access_")
    error_message = "The key policy must let FSx's service-linked role use the key through S3."
  }
}

run "training_role_reaches_this_bucket_only" {
  command = plan

  assert {
    condition = (
      aws_eks_pod_identity_association.training.namespace == "llmops" &&
      aws_eks_pod_identity_association.training.service_account == "llmops-training"
    )
    error_message = "Only llmops/llmops-training may assume the training role."
  }
  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.training.policy).Statement :
      contains(["arn:aws:s3:::llm-test-123456789012-us-east-1", "arn:aws:s3:::llm-test-123456789012-us-east-1/*", aws_kms_key.storage.arn], s.Resource)
    ])
    error_message = "The training role may touch only this bucket, its objects and its key."
  }
}

run "unlinked_storage_has_no_association_or_fsx_key_grant" {
  command = plan

  variables {
    fsx_s3_sync = false
  }

  assert {
    condition     = length(aws_fsx_data_repository_association.s3) == 0 && !strcontains(aws_kms_key.storage.policy, "FSxS3Access")
    error_message = "Without the link there is no association and no key grant for FSx."
  }
}

run "refuses_an_fsx_size_fsx_cannot_make" {
  command = plan

  variables {
    fsx_storage_capacity_gib = 3000
  }

  expect_failures = [var.fsx_storage_capacity_gib]
}

run "refuses_an_unknown_throughput" {
  command = plan

  variables {
    fsx_throughput_per_tib = 200
  }

  expect_failures = [var.fsx_throughput_per_tib]
}
