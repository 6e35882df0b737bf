# Shared storage of one cluster: an S3 bucket for datasets and checkpoint
# copies, an FSx for Lustre file system that every GPU node mounts for
# training data and checkpoints, the link between the two, and the one IAM
# role (through EKS Pod Identity) allowed to use the bucket.

data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  partition  = data.aws_partition.current.partition
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  bucket     = "${var.name}-${local.account_id}-${local.region}"
  # FSx reaches a linked bucket through this service-linked role (one per file
  # system, hence the wildcard).
  fsx_s3_role = "arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/s3.data-source.lustre.fsx.amazonaws.com/AWSServiceRoleForFSxS3Access_*"
}

resource "aws_kms_key" "storage" {
  description             = "${var.name}: S3 bucket and FSx for Lustre"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat([
      {
        Sid       = "AccountAdministersKeyThroughIAM"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      }],
      var.fsx_s3_sync ? [{
        # FSx's service-linked role reads and writes the SSE-KMS bucket; it
        # has no IAM policy for our key, so the key policy names it, and only
        # for calls S3 makes on its behalf in this account.
        Sid       = "FSxLinkedBucketThroughS3"
        Effect    = "Allow"
        Principal = { AWS = "*" }
        Action    = ["kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"]
        Resource  = "*"
        Condition = {
          StringEquals = {
            "kms:CallerAccount" = local.account_id
            "kms:ViaService"    = "s3.${local.region}.amazonaws.com"
          }
          ArnLike = { "aws:PrincipalArn" = local.fsx_s3_role }
        }
      }] : [],
    )
  })
  tags = var.tags
}

resource "aws_kms_alias" "storage" {
  name          = "alias/${var.name}-storage"
  target_key_id = aws_kms_key.storage.key_id
}

# --- S3 -------------------------------------------------------------------

resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV_AWS_18:server access logs need a second bucket per cluster; audit S3 through CloudTrail data events, enabled once per account by the platform team
  #checkov:skip=CKV_AWS_144:the bucket holds datasets and checkpoint copies that can be re-made; versioning covers overwrites, and cross-region replication doubles storage cost; add it where a DR policy asks for it
  #checkov:skip=CKV2_AWS_62:nothing consumes bucket events; a notification target without a subscriber is noise
  bucket        = local.bucket
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    object_ownership = "BucketOwnerEnforced" # ACLs off
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.storage.arn
    }
    bucket_key_enabled = true # one KMS call per object batch, not per request
  }
}

resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id
  versioning_configuration {
    status = "Enabled" # an overwritten checkpoint stays recoverable
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    id     = "expire-old-versions-and-uploads"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7 # interrupted checkpoint uploads
    }
  }

  depends_on = [aws_s3_bucket_versioning.data]
}

resource "aws_s3_bucket_policy" "data" {
  bucket = aws_s3_bucket.data.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DenyInsecureTransport"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.data.arn, "${aws_s3_bucket.data.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
  depends_on = [aws_s3_bucket_public_access_block.data]
}

# --- FSx for Lustre -------------------------------------------------------

resource "aws_security_group" "fsx" {
  name_prefix = "${var.name}-fsx-"
  description = "Lustre traffic between ${var.name} nodes and its FSx file system"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-fsx" })

  lifecycle {
    create_before_destroy = true
  }
}

locals {
  # Lustre uses TCP 988 and 1018-1023, between clients and servers and between
  # the file system's own servers. Keys are static (client0, client1, self) so
  # that the plan knows every rule before the security groups exist.
  lustre_ports = { lnet = [988, 988], lustre = [1018, 1023] }
  lustre_peers = merge(
    { for i, sg in var.client_security_group_ids : "client${i}" => sg },
    { self = aws_security_group.fsx.id },
  )
  lustre_rules = {
    for pair in setproduct(keys(local.lustre_ports), keys(local.lustre_peers)) : "${pair[0]}-${pair[1]}" => {
      ports = local.lustre_ports[pair[0]]
      peer  = local.lustre_peers[pair[1]]
      what  = pair[1] == "self" ? "the file system's servers" : "cluster nodes"
    }
  }
}

resource "aws_vpc_security_group_ingress_rule" "lustre" {
  for_each                     = local.lustre_rules
  security_group_id            = aws_security_group.fsx.id
  referenced_security_group_id = each.value.peer
  ip_protocol                  = "tcp"
  from_port                    = each.value.ports[0]
  to_port                      = each.value.ports[1]
  description                  = "Lustre from ${each.value.what}"
}

resource "aws_vpc_security_group_egress_rule" "lustre" {
  for_each                     = local.lustre_rules
  security_group_id            = aws_security_group.fsx.id
  referenced_security_group_id = each.value.peer
  ip_protocol                  = "tcp"
  from_port                    = each.value.ports[0]
  to_port                      = each.value.ports[1]
  description                  = "Lustre to ${each.value.what}"
}

resource "aws_fsx_lustre_file_system" "shared" {
  storage_capacity            = var.fsx_storage_capacity_gib
  subnet_ids                  = [var.subnet_id]
  security_group_ids          = [aws_security_group.fsx.id]
  deployment_type             = "PERSISTENT_2"
  per_unit_storage_throughput = var.fsx_throughput_per_tib
  file_system_type_version    = "2.15"
  data_compression_type       = "LZ4" # tokenised data and optimizer states compress well
  kms_key_id                  = aws_kms_key.storage.arn
  copy_tags_to_backups        = true

  metadata_configuration {
    mode = "AUTOMATIC"
  }

  tags = merge(var.tags, { Name = "${var.name}-shared" })
}

resource "aws_fsx_data_repository_association" "s3" {
  count                            = var.fsx_s3_sync ? 1 : 0
  file_system_id                   = aws_fsx_lustre_file_system.shared.id
  file_system_path                 = "/s3"
  data_repository_path             = "s3://${aws_s3_bucket.data.id}"
  batch_import_meta_data_on_create = true

  s3 {
    auto_import_policy {
      events = ["NEW", "CHANGED", "DELETED"]
    }
    auto_export_policy {
      events = ["NEW", "CHANGED", "DELETED"]
    }
  }

  tags = var.tags
}

# --- Pod Identity for training pods ---------------------------------------

resource "aws_iam_role" "training" {
  name_prefix = "${var.name}-train-"
  description = "llmops training pods of ${var.name}: read datasets, write checkpoint copies"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "pods.eks.amazonaws.com" }
      Action    = ["sts:AssumeRole", "sts:TagSession"]
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy" "training" {
  name = "bucket-access"
  role = aws_iam_role.training.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ListTheBucket"
        Effect   = "Allow"
        Action   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
        Resource = aws_s3_bucket.data.arn
      },
      {
        Sid    = "ReadWriteObjects"
        Effect = "Allow"
        Action = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
        "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
        Resource = "${aws_s3_bucket.data.arn}/*"
      },
      {
        Sid      = "UseTheBucketKey"
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = aws_kms_key.storage.arn
      },
    ]
  })
}

resource "aws_eks_pod_identity_association" "training" {
  cluster_name    = var.cluster_name
  namespace       = var.training_namespace
  service_account = var.training_service_account
  role_arn        = aws_iam_role.training.arn
  tags            = var.tags
}
