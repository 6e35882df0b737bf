# A fixed-size managed node group of GPU instances wired for multi-node
# training: one EFA interface per network card, a cluster placement group (or
# reserved capacity, which already decides placement), IMDSv2 only, encrypted
# volumes, and a taint so that only pods asking for GPUs land here.

data "aws_ec2_instance_type" "gpu" {
  instance_type = var.instance_type
}

locals {
  # One EFA interface per network card is what NCCL needs for full bandwidth
  # (32 on p5.48xlarge, 4 on p4d.24xlarge).
  efa_interfaces = var.efa_enabled ? data.aws_ec2_instance_type.gpu.maximum_network_cards : 0
  reserved       = var.capacity_reservation != null
  capacity_block = local.reserved && try(var.capacity_reservation.type, "") == "capacity-block"
  # Reserved capacity already fixes placement (Capacity Blocks are co-located
  # by AWS; an ODCR carries its own placement group if it has one), and a
  # launch that names both a reservation and a different placement group fails.
  placement_group = !local.reserved
  al2023          = startswith(var.ami_type, "AL2023")

  labels = merge(
    {
      "llmops.dev/node-role"   = "gpu"
      "llmops.dev/accelerator" = "nvidia"
      "llmops.dev/efa"         = tostring(var.efa_enabled)
      # Bottlerocket runs the NVIDIA device plugin itself; the DaemonSet
      # installed after apply selects only nodes that need it.
      "llmops.dev/nvidia-device-plugin" = local.al2023 ? "daemonset" : "builtin"
    },
    var.labels,
  )
}

resource "aws_placement_group" "gpu" {
  count    = local.placement_group ? 1 : 0
  name     = "${var.cluster_name}-${var.name}"
  strategy = "cluster"
  tags     = var.tags
}

# EFA needs every protocol open between the interfaces of the group, in and
# out, through a security group that references itself. Nothing else is
# admitted here; control-plane traffic uses the cluster security group.
resource "aws_security_group" "efa" {
  name_prefix = "${var.cluster_name}-${var.name}-efa-"
  description = "EFA traffic between the GPU nodes of ${var.cluster_name}/${var.name}"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.cluster_name}-${var.name}-efa" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "efa_self" {
  security_group_id            = aws_security_group.efa.id
  referenced_security_group_id = aws_security_group.efa.id
  ip_protocol                  = "-1"
  description                  = "EFA from the other GPU nodes"
}

resource "aws_vpc_security_group_egress_rule" "efa_self" {
  security_group_id            = aws_security_group.efa.id
  referenced_security_group_id = aws_security_group.efa.id
  ip_protocol                  = "-1"
  description                  = "EFA to the other GPU nodes"
}

resource "aws_launch_template" "gpu" {
  name_prefix            = "${var.cluster_name}-${var.name}-"
  description            = "GPU nodes of ${var.cluster_name}: ${local.efa_interfaces} EFA interface(s), IMDSv2 only"
  update_default_version = true
  # With explicit network interfaces the security groups go on the interfaces.
  vpc_security_group_ids = var.efa_enabled ? null : [var.cluster_security_group_id]

  # AL2023's nodeadm stripes the instance-store NVMe drives (8 x 3.84 TB on a
  # p5) into a RAID0 for containerd and kubelet; EKS merges this part with the
  # bootstrap user data of the managed node group.
  user_data = local.al2023 ? base64encode(<<-EOT
    MIME-Version: 1.0
    Content-Type: multipart/mixed; boundary="LLMOPS"

    --LLMOPS
    Content-Type: application/node.eks.aws

    apiVersion: node.eks.aws/v1alpha1
    kind: NodeConfig
    spec:
      instance:
        localStorage:
          strategy: RAID0

    --LLMOPS--
    EOT
  ) : null

  dynamic "network_interfaces" {
    for_each = range(local.efa_interfaces)
    content {
      network_card_index = network_interfaces.value
      # Card 0 carries the primary ENA+EFA interface; every other card gets a
      # secondary interface (device index 1).
      device_index          = network_interfaces.value == 0 ? 0 : 1
      interface_type        = network_interfaces.value > 0 && var.efa_only_secondary_interfaces ? "efa-only" : "efa"
      delete_on_termination = true
      security_groups       = [var.cluster_security_group_id, aws_security_group.efa.id]
    }
  }

  dynamic "placement" {
    for_each = local.placement_group ? [1] : []
    content {
      group_name = aws_placement_group.gpu[0].name
    }
  }

  dynamic "capacity_reservation_specification" {
    for_each = local.reserved ? [1] : []
    content {
      capacity_reservation_target {
        capacity_reservation_id = var.capacity_reservation.id
      }
    }
  }

  dynamic "instance_market_options" {
    for_each = local.capacity_block ? [1] : []
    content {
      market_type = "capacity-block"
    }
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1          # pods use Pod Identity, never node credentials
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = local.al2023 ? "/dev/xvda" : "/dev/xvdb" # Bottlerocket's data volume
    ebs {
      volume_size           = var.volume_size_gib
      volume_type           = "gp3"
      throughput            = 500
      iops                  = 6000
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.cluster_name}-${var.name}" })
  }

  tags = var.tags

  lifecycle {
    precondition {
      condition     = !var.efa_enabled || data.aws_ec2_instance_type.gpu.efa_supported
      error_message = "${var.instance_type} does not support EFA. Choose an EFA instance type (p5.48xlarge, p5en.48xlarge, p4d.24xlarge, g6e.48xlarge...) or set efa_enabled = false for single-node work."
    }
    precondition {
      condition     = length(data.aws_ec2_instance_type.gpu.gpus) > 0
      error_message = "${var.instance_type} has no GPUs. Choose a GPU instance type such as p5.48xlarge."
    }
  }
}

resource "aws_eks_node_group" "gpu" {
  cluster_name    = var.cluster_name
  node_group_name = var.name
  node_role_arn   = var.node_role_arn
  subnet_ids      = [var.subnet_id]
  ami_type        = var.ami_type
  instance_types  = [var.instance_type]
  capacity_type   = local.capacity_block ? "CAPACITY_BLOCK" : "ON_DEMAND"

  launch_template {
    id      = aws_launch_template.gpu.id
    version = aws_launch_template.gpu.latest_version
  }

  scaling_config {
    desired_size = var.node_count
    min_size     = var.node_count
    max_size     = var.node_count
  }

  update_config {
    max_unavailable = 1
  }

  # EKS node auto-repair replaces nodes whose GPUs report fatal errors (XID)
  # or that stop being Ready, so one bad GPU does not stall a whole job.
  node_repair_config {
    enabled = true
  }

  labels = local.labels

  taint {
    key    = "nvidia.com/gpu"
    value  = "true"
    effect = "NO_SCHEDULE"
  }

  tags = var.tags

  # p5 instances take a while to pass their first boot checks.
  timeouts {
    create = "60m"
    update = "60m"
  }
}
