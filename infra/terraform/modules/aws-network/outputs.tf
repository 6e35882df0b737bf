output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "IPv4 CIDR of the VPC (security groups admit in-VPC traffic by it)."
  value       = aws_vpc.this.cidr_block
}

output "private_subnet_ids" {
  description = "Private subnet IDs, in the order of var.availability_zones."
  value       = aws_subnet.private[*].id
}

output "private_subnet_ids_by_zone" {
  description = "Private subnet ID keyed by availability zone (the GPU node group and FSx pick one zone)."
  value       = zipmap(var.availability_zones, aws_subnet.private[*].id)
}

output "public_subnet_ids" {
  description = "Public subnet IDs (NAT gateways only)."
  value       = aws_subnet.public[*].id
}
