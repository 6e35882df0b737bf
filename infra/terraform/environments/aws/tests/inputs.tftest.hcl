# Bad inputs must be refused at plan time with a message that names the fix.

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
  gpu_node_count = 2
}

run "rejects_zero_nodes" {
  command = plan
  variables {
    gpu_node_count = 0
  }
  expect_failures = [var.gpu_node_count]
}

run "rejects_fractional_nodes" {
  command = plan
  variables {
    gpu_node_count = 1.5
  }
  expect_failures = [var.gpu_node_count]
}

run "rejects_a_cpu_instance_type" {
  command = plan
  variables {
    gpu_instance_type = "m5.large"
  }
  expect_failures = [var.gpu_instance_type]
}

run "rejects_an_fsx_size_fsx_cannot_make" {
  command = plan
  variables {
    fsx_storage_capacity_gib = 3000
  }
  expect_failures = [var.fsx_storage_capacity_gib]
}

run "rejects_an_api_open_to_the_internet" {
  command = plan
  variables {
    endpoint_public_access_cidrs = ["0.0.0.0/0"]
  }
  expect_failures = [var.endpoint_public_access_cidrs]
}

run "rejects_a_reservation_without_its_zone" {
  command = plan
  variables {
    capacity_reservation = { id = "cr-0123456789abcdef0", type = "capacity-block" }
  }
  expect_failures = [var.capacity_reservation]
}

run "rejects_a_malformed_reservation_id" {
  command = plan
  variables {
    gpu_availability_zone = "us-east-1a"
    capacity_reservation  = { id = "reservation-1", type = "on-demand" }
  }
  expect_failures = [var.capacity_reservation]
}

run "rejects_a_zone_of_another_region" {
  command = plan
  variables {
    gpu_availability_zone = "eu-west-1a"
  }
  expect_failures = [var.gpu_availability_zone]
}

run "rejects_an_uppercase_name" {
  command = plan
  variables {
    name = "LLM"
  }
  expect_failures = [var.name]
}
