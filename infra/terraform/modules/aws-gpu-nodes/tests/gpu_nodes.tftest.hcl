# The GPU node group against a mocked provider: EFA wiring, placement,
# reserved capacity, instance metadata and volume encryption, and the
# preconditions that refuse instance types without EFA or GPUs.

mock_provider "aws" {
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  # What EC2 reports for p5.48xlarge: 32 network cards, EFA, 8 H100.
  mock_data "aws_ec2_instance_type" {
    defaults = {
      maximum_network_cards = 32
      efa_supported         = true
      default_vcpus         = 192
      memory_size           = 2097152
      gpus                  = [{ count = 8, manufacturer = "NVIDIA", memory_size = 81920, name = "H100" }]
    }
  }
  # Known at plan time, so that assertions can name the EFA security group.
  mock_resource "aws_security_group" {
    override_during = plan
    defaults        = { id = "sg-0efa0efa" }
  }
}

variables {
  cluster_name              = "llm-test"
  vpc_id                    = "vpc-0a1b2c3d"
  subnet_id                 = "subnet-0a1b2c3d"
  node_role_arn             = "arn:aws:iam::123456789012:role/llm-test-node"
  cluster_security_group_id = "sg-0c1c2c3c"
  kms_key_arn               = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
  node_count                = 4
}

run "one_efa_interface_per_network_card" {
  command = plan

  assert {
    condition     = length(aws_launch_template.gpu.network_interfaces) == 32
    error_message = "p5.48xlarge has 32 network cards; the launch template must attach 32 EFA interfaces."
  }
  assert {
    condition = (
      aws_launch_template.gpu.network_interfaces[0].interface_type == "efa" &&
      aws_launch_template.gpu.network_interfaces[0].device_index == 0 &&
      aws_launch_template.gpu.network_interfaces[0].network_card_index == 0
    )
    error_message = "Card 0 must carry the primary interface, of type efa, at device index 0."
  }
  assert {
    condition = alltrue([
      for i, ni in aws_launch_template.gpu.network_interfaces :
      ni.network_card_index == i && (i == 0 || (ni.device_index == 1 && ni.interface_type == "efa-only"))
    ])
    error_message = "Cards 1..31 must each carry one efa-only interface at device index 1."
  }
  assert {
    condition = alltrue([
      for ni in aws_launch_template.gpu.network_interfaces : toset(ni.security_groups) == toset(["sg-0c1c2c3c", "sg-0efa0efa"])
    ])
    error_message = "Every interface must carry the cluster security group and the EFA security group."
  }
  assert {
    condition     = aws_launch_template.gpu.vpc_security_group_ids == null
    error_message = "With explicit interfaces, security groups belong on the interfaces only."
  }
  assert {
    condition     = output.efa_interfaces_per_node == 32 && output.gpus_per_node == 8
    error_message = "Outputs must report 32 EFA interfaces and 8 GPUs per p5 node."
  }
}

run "efa_interfaces_can_all_carry_addresses" {
  command = plan

  variables {
    efa_only_secondary_interfaces = false
  }

  assert {
    condition     = alltrue([for ni in aws_launch_template.gpu.network_interfaces : ni.interface_type == "efa"])
    error_message = "With efa_only_secondary_interfaces = false every interface is a full efa interface."
  }
}

run "efa_security_group_admits_only_itself" {
  command = plan

  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.efa_self.ip_protocol == "-1" &&
      aws_vpc_security_group_ingress_rule.efa_self.referenced_security_group_id == "sg-0efa0efa" &&
      aws_vpc_security_group_ingress_rule.efa_self.cidr_ipv4 == null &&
      aws_vpc_security_group_egress_rule.efa_self.cidr_ipv4 == null
    )
    error_message = "EFA needs all protocols between the nodes, by security-group reference, never by CIDR."
  }
}

run "fixed_size_group_in_a_cluster_placement_group" {
  command = plan

  assert {
    condition     = aws_placement_group.gpu[0].strategy == "cluster" && aws_launch_template.gpu.placement[0].group_name == "llm-test-gpu"
    error_message = "Instances must launch into a cluster placement group."
  }
  assert {
    condition = (
      aws_eks_node_group.gpu.scaling_config[0].desired_size == 4 &&
      aws_eks_node_group.gpu.scaling_config[0].min_size == 4 &&
      aws_eks_node_group.gpu.scaling_config[0].max_size == 4
    )
    error_message = "The node group must have a fixed size equal to node_count."
  }
  assert {
    condition     = aws_eks_node_group.gpu.subnet_ids == toset(["subnet-0a1b2c3d"]) && aws_eks_node_group.gpu.capacity_type == "ON_DEMAND"
    error_message = "Without a reservation the nodes are On-Demand in the one given subnet."
  }
  assert {
    condition     = aws_eks_node_group.gpu.node_repair_config[0].enabled
    error_message = "Node auto-repair must be on so that a GPU with fatal errors gets replaced."
  }
}

run "gpu_nodes_are_tainted_and_labelled" {
  command = plan

  assert {
    condition     = anytrue([for t in aws_eks_node_group.gpu.taint : t.key == "nvidia.com/gpu" && t.effect == "NO_SCHEDULE"])
    error_message = "GPU nodes must be tainted so that only GPU pods land on them."
  }
  assert {
    condition = (
      aws_eks_node_group.gpu.labels["llmops.dev/node-role"] == "gpu" &&
      aws_eks_node_group.gpu.labels["llmops.dev/nvidia-device-plugin"] == "daemonset"
    )
    error_message = "AL2023 GPU nodes must be labelled for the NVIDIA device plugin DaemonSet."
  }
}

run "imdsv2_required_and_volume_encrypted" {
  command = plan

  assert {
    condition = (
      aws_launch_template.gpu.metadata_options[0].http_tokens == "required" &&
      aws_launch_template.gpu.metadata_options[0].http_put_response_hop_limit == 1
    )
    error_message = "The launch template must require IMDSv2 with a hop limit of 1."
  }
  assert {
    condition = (
      aws_launch_template.gpu.block_device_mappings[0].ebs[0].encrypted == "true" &&
      aws_launch_template.gpu.block_device_mappings[0].ebs[0].kms_key_id == var.kms_key_arn
    )
    error_message = "The root volume must be encrypted with the cluster key."
  }
}

run "capacity_block_replaces_the_placement_group" {
  command = plan

  variables {
    capacity_reservation = { id = "cr-0123456789abcdef0", type = "capacity-block" }
  }

  assert {
    condition     = aws_eks_node_group.gpu.capacity_type == "CAPACITY_BLOCK"
    error_message = "A Capacity Block needs the CAPACITY_BLOCK capacity type."
  }
  assert {
    condition = (
      aws_launch_template.gpu.instance_market_options[0].market_type == "capacity-block" &&
      aws_launch_template.gpu.capacity_reservation_specification[0].capacity_reservation_target[0].capacity_reservation_id == "cr-0123456789abcdef0"
    )
    error_message = "The launch template must target the Capacity Block."
  }
  assert {
    condition     = length(aws_placement_group.gpu) == 0 && length(aws_launch_template.gpu.placement) == 0 && output.placement_group_name == null
    error_message = "Reserved capacity decides placement; no placement group may be named."
  }
}

run "on_demand_reservation_stays_on_demand" {
  command = plan

  variables {
    capacity_reservation = { id = "cr-0123456789abcdef0", type = "on-demand" }
  }

  assert {
    condition     = aws_eks_node_group.gpu.capacity_type == "ON_DEMAND" && length(aws_launch_template.gpu.instance_market_options) == 0
    error_message = "An On-Demand Capacity Reservation launches On-Demand instances."
  }
}

run "p4d_gets_four_efa_interfaces" {
  command = plan

  variables {
    instance_type = "p4d.24xlarge"
  }

  override_data {
    target = data.aws_ec2_instance_type.gpu
    values = {
      maximum_network_cards = 4
      efa_supported         = true
      gpus                  = [{ count = 8, manufacturer = "NVIDIA", memory_size = 40960, name = "A100" }]
    }
  }

  assert {
    condition     = length(aws_launch_template.gpu.network_interfaces) == 4
    error_message = "p4d.24xlarge has 4 network cards; the launch template must attach 4 EFA interfaces."
  }
}

run "without_efa_no_interfaces_are_declared" {
  command = plan

  variables {
    efa_enabled = false
  }

  assert {
    condition     = length(aws_launch_template.gpu.network_interfaces) == 0 && aws_launch_template.gpu.vpc_security_group_ids == toset(["sg-0c1c2c3c"])
    error_message = "Without EFA the template declares no interfaces and uses the cluster security group."
  }
}

run "bottlerocket_nodes_use_their_builtin_device_plugin" {
  command = plan

  variables {
    ami_type = "BOTTLEROCKET_x86_64_NVIDIA"
  }

  assert {
    condition     = aws_eks_node_group.gpu.labels["llmops.dev/nvidia-device-plugin"] == "builtin" && aws_launch_template.gpu.user_data == null
    error_message = "Bottlerocket ships the NVIDIA device plugin and takes no nodeadm user data."
  }
}

run "refuses_an_instance_type_without_efa" {
  command = plan

  variables {
    instance_type = "g5.xlarge"
  }

  override_data {
    target = data.aws_ec2_instance_type.gpu
    values = {
      maximum_network_cards = 1
      efa_supported         = false
      gpus                  = [{ count = 1, manufacturer = "NVIDIA", memory_size = 24576, name = "A10G" }]
    }
  }

  expect_failures = [aws_launch_template.gpu]
}

run "refuses_zero_nodes" {
  command = plan

  variables {
    node_count = 0
  }

  expect_failures = [var.node_count]
}

run "refuses_a_malformed_reservation" {
  command = plan

  variables {
    capacity_reservation = { id = "cr-0123456789abcdef0", type = "spot" }
  }

  expect_failures = [var.capacity_reservation]
}
