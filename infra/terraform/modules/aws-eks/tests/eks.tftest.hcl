# The EKS control plane and system nodes against a mocked provider: private
# API by default, encryption, IMDSv2, least-privilege node role.

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
    defaults        = { arn = "arn:aws:kms:us-east-1:123456789012:key/11111111-1111-1111-1111-111111111111" }
  }
}

variables {
  name       = "llm-test"
  vpc_id     = "vpc-0a1b2c3d"
  subnet_ids = ["subnet-0a1b2c3d", "subnet-0e0f0a0b"]
}

run "api_endpoint_is_private_by_default" {
  command = plan

  assert {
    condition = (
      aws_eks_cluster.this.vpc_config[0].endpoint_private_access &&
      !aws_eks_cluster.this.vpc_config[0].endpoint_public_access
    )
    error_message = "The Kubernetes API must be private unless CIDRs are given."
  }
  assert {
    condition     = aws_eks_cluster.this.access_config[0].authentication_mode == "API"
    error_message = "Access is managed by EKS access entries, not the aws-auth ConfigMap."
  }
}

run "api_endpoint_opens_only_to_listed_cidrs" {
  command = plan

  variables {
    endpoint_public_access_cidrs = ["203.0.113.0/24"]
  }

  assert {
    condition = (
      aws_eks_cluster.this.vpc_config[0].endpoint_public_access &&
      aws_eks_cluster.this.vpc_config[0].public_access_cidrs == toset(["203.0.113.0/24"])
    )
    error_message = "A public endpoint must admit exactly the listed CIDRs."
  }
}

run "secrets_logs_and_volumes_use_the_rotating_cluster_key" {
  command = plan

  assert {
    condition = (
      aws_eks_cluster.this.encryption_config[0].resources == toset(["secrets"]) &&
      aws_eks_cluster.this.encryption_config[0].provider[0].key_arn == aws_kms_key.cluster.arn
    )
    error_message = "Kubernetes secrets must be envelope-encrypted with the cluster key."
  }
  assert {
    condition     = aws_kms_key.cluster.enable_key_rotation
    error_message = "The cluster key must rotate."
  }
  assert {
    condition     = aws_cloudwatch_log_group.cluster.kms_key_id == aws_kms_key.cluster.arn && length(aws_eks_cluster.this.enabled_cluster_log_types) == 5
    error_message = "All five control-plane log types must go to a log group encrypted with the cluster key."
  }
  assert {
    condition = (
      aws_launch_template.system.block_device_mappings[0].ebs[0].encrypted == "true" &&
      aws_launch_template.system.block_device_mappings[0].ebs[0].kms_key_id == aws_kms_key.cluster.arn
    )
    error_message = "System node volumes must be encrypted with the cluster key."
  }
  assert {
    condition     = strcontains(aws_kms_key.cluster.policy, "AWSServiceRoleForAutoScaling")
    error_message = "The key policy must let Auto Scaling use the key, or encrypted nodes never launch."
  }
}

run "system_nodes_require_imdsv2" {
  command = plan

  assert {
    condition = (
      aws_launch_template.system.metadata_options[0].http_tokens == "required" &&
      aws_launch_template.system.metadata_options[0].http_put_response_hop_limit == 1
    )
    error_message = "System nodes must require IMDSv2 with a hop limit of 1."
  }
}

run "node_role_has_no_network_permissions" {
  command = plan

  assert {
    condition     = !contains(keys(aws_iam_role_policy_attachment.node), "AmazonEKS_CNI_Policy")
    error_message = "The CNI policy belongs to the vpc-cni Pod Identity role, not to every node."
  }
  assert {
    condition     = jsondecode(aws_iam_role.vpc_cni.assume_role_policy).Statement[0].Principal.Service == "pods.eks.amazonaws.com"
    error_message = "The vpc-cni role must be assumable through Pod Identity only."
  }
  assert {
    condition     = one(aws_eks_addon.before_nodes["vpc-cni"].pod_identity_association).service_account == "aws-node"
    error_message = "The vpc-cni add-on must use its Pod Identity role."
  }
}

run "ssm_can_be_turned_off" {
  command = plan

  variables {
    enable_ssm = false
  }

  assert {
    condition     = keys(aws_iam_role_policy_attachment.node) == ["AmazonEC2ContainerRegistryPullOnly", "AmazonEKSWorkerNodePolicy"]
    error_message = "Without SSM the node role has only the worker and image-pull policies."
  }
}

run "extra_admins_get_cluster_admin_access" {
  command = plan

  variables {
    admin_principal_arns = ["arn:aws:iam::123456789012:role/platform"]
  }

  assert {
    condition     = endswith(aws_eks_access_policy_association.admin["arn:aws:iam::123456789012:role/platform"].policy_arn, "AmazonEKSClusterAdminPolicy")
    error_message = "Listed principals must get the cluster admin access policy."
  }
}

run "refuses_an_api_open_to_the_internet" {
  command = plan

  variables {
    endpoint_public_access_cidrs = ["0.0.0.0/0"]
  }

  expect_failures = [var.endpoint_public_access_cidrs]
}

run "refuses_a_cluster_without_pod_identity" {
  command = plan

  variables {
    addons = { "vpc-cni" = null, "coredns" = null }
  }

  expect_failures = [var.addons]
}
