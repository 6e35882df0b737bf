output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "HTTPS endpoint of the Kubernetes API."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA bundle of the Kubernetes API, for kubeconfig."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "cluster_security_group_id" {
  description = "Security group EKS created for the control plane and managed nodes; every node interface must carry it."
  value       = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

output "kubernetes_version" {
  description = "Kubernetes minor version of the control plane."
  value       = aws_eks_cluster.this.version
}

output "node_role_arn" {
  description = "IAM role of every node group."
  value       = aws_iam_role.node.arn
}

output "kms_key_arn" {
  description = "Customer-managed key for secrets, logs and node volumes."
  value       = aws_kms_key.cluster.arn
}

output "system_node_group_name" {
  description = "Name of the CPU system node group (GPU node groups wait for it)."
  value       = aws_eks_node_group.system.node_group_name
}
