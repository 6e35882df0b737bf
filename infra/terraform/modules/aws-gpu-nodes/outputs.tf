output "node_group_name" {
  description = "Name of the GPU node group."
  value       = aws_eks_node_group.gpu.node_group_name
}

output "instance_type" {
  description = "GPU instance type of the nodes."
  value       = var.instance_type
}

output "gpus_per_node" {
  description = "GPUs per node, as EC2 reports them for the instance type."
  value       = sum([for g in data.aws_ec2_instance_type.gpu.gpus : g.count])
}

output "vcpus_per_node" {
  description = "vCPUs per node (pods size their CPU requests from it)."
  value       = data.aws_ec2_instance_type.gpu.default_vcpus
}

output "memory_gib_per_node" {
  description = "Memory per node in GiB."
  value       = floor(data.aws_ec2_instance_type.gpu.memory_size / 1024)
}

output "efa_interfaces_per_node" {
  description = "EFA interfaces per node (the vpc.amazonaws.com/efa resource a pod requests); 0 without EFA."
  value       = local.efa_interfaces
}

output "placement_group_name" {
  description = "Cluster placement group of the nodes; null when reserved capacity decides placement."
  value       = local.placement_group ? aws_placement_group.gpu[0].name : null
}

output "efa_security_group_id" {
  description = "Security group admitting EFA traffic between the nodes (FSx admits Lustre from it too)."
  value       = aws_security_group.efa.id
}

output "labels" {
  description = "Kubernetes labels of the GPU nodes (node selectors of training pods and device plugins)."
  value       = local.labels
}

output "taints" {
  description = "Kubernetes taints of the GPU nodes, in pod-toleration form."
  value       = [{ key = "nvidia.com/gpu", value = "true", effect = "NoSchedule" }]
}
