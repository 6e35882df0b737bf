# The composed AWS environment against a mocked provider: the modules fit
# together and the `cluster` output (what llmops provision reads) says what
# was built.

mock_provider "aws" {
  mock_data "aws_availability_zones" {
    defaults = { names = ["us-east-1a", "us-east-1b", "us-east-1c"] }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_region" {
    defaults = { name = "us-east-1" }
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
}

variables {
  name           = "llm-test"
  region         = "us-east-1"
  gpu_node_count = 4
}

run "cluster_output_describes_the_gpu_nodes" {
  command = plan

  assert {
    condition = (
      output.cluster.cloud == "aws" &&
      output.cluster.name == "llm-test" &&
      output.cluster.gpu_instance_type == "p5.48xlarge" &&
      output.cluster.gpu_node_count == 4 &&
      output.cluster.gpus_per_node == 8 &&
      output.cluster.efa_interfaces_per_node == 32 &&
      output.cluster.vcpus_per_node == 192 &&
      output.cluster.memory_gib_per_node == 2048
    )
    error_message = "The cluster output must describe 4 p5 nodes with 8 GPUs and 32 EFA interfaces each."
  }
  assert {
    condition     = output.cluster.gpu_zone == "us-east-1a" && output.gpu_placement_group == "llm-test-gpu"
    error_message = "Without a reservation the GPU nodes go to the first zone, in the cluster placement group."
  }
  assert {
    condition     = !output.cluster.endpoint_public
    error_message = "The API endpoint is private by default."
  }
  assert {
    condition = (
      output.cluster.training_namespace == "llmops" &&
      output.cluster.training_service_account == "llmops-training" &&
      output.cluster.bucket == "llm-test-123456789012-us-east-1" &&
      output.cluster.fsx.s3_path == "/s3"
    )
    error_message = "The output must name the training identity, the bucket and the FSx folder linked to it."
  }
  assert {
    condition     = output.cluster.gpu_node_labels["llmops.dev/node-role"] == "gpu" && output.cluster.gpu_node_taints[0].key == "nvidia.com/gpu"
    error_message = "Labels and taints of the GPU nodes must reach the cluster profile."
  }
}

run "reserved_capacity_moves_the_gpu_zone" {
  command = plan

  variables {
    zone_count            = 3
    gpu_availability_zone = "us-east-1c"
    capacity_reservation  = { id = "cr-0123456789abcdef0", type = "capacity-block" }
  }

  assert {
    condition     = output.cluster.gpu_zone == "us-east-1c" && output.gpu_placement_group == null
    error_message = "Reserved capacity puts the GPU nodes in its zone, with no placement group of ours."
  }
}

run "public_endpoint_is_reported" {
  command = plan

  variables {
    endpoint_public_access_cidrs = ["198.51.100.7/32"]
  }

  assert {
    condition     = output.cluster.endpoint_public
    error_message = "The output must say the endpoint is public so that llmops can reach it."
  }
}
