# An AWS GPU cluster for the llmops Kubernetes backend: VPC, EKS with CPU
# system nodes, one EFA-enabled GPU node group, FSx for Lustre and S3.
# `llmops provision aws` drives this folder; after apply it writes the
# kubeconfig and the cluster profile, and applies addons/ (the NVIDIA and EFA
# device plugins) plus the shared volume and the training service account.

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:the GPU zone is pinned by gpu_availability_zone and put first; the other zones are taken in name order, and a zone AWS adds sorts after the existing ones
  state = "available"
  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"] # no Local Zones or Wavelength zones
  }
}

locals {
  # The GPU zone comes first so that it is always one of the VPC's zones.
  zones = slice(
    distinct(concat(compact([var.gpu_availability_zone]), data.aws_availability_zones.available.names)),
    0, var.zone_count,
  )
  gpu_zone = local.zones[0]
}

module "network" {
  source = "../../modules/aws-network"

  name               = var.name
  cidr               = var.vpc_cidr
  availability_zones = local.zones
  kms_key_arn        = module.eks.kms_key_arn
}

module "eks" {
  source = "../../modules/aws-eks"

  name                         = var.name
  kubernetes_version           = var.kubernetes_version
  vpc_id                       = module.network.vpc_id
  subnet_ids                   = module.network.private_subnet_ids
  endpoint_public_access_cidrs = var.endpoint_public_access_cidrs
  admin_principal_arns         = var.admin_principal_arns
  system_instance_type         = var.system_instance_type
  system_node_count            = var.system_node_count
}

module "gpu_nodes" {
  source = "../../modules/aws-gpu-nodes"

  cluster_name              = module.eks.cluster_name
  vpc_id                    = module.network.vpc_id
  subnet_id                 = module.network.private_subnet_ids_by_zone[local.gpu_zone]
  node_role_arn             = module.eks.node_role_arn
  cluster_security_group_id = module.eks.cluster_security_group_id
  kms_key_arn               = module.eks.kms_key_arn
  instance_type             = var.gpu_instance_type
  node_count                = var.gpu_node_count
  ami_type                  = var.gpu_ami_type
  efa_enabled               = var.efa_enabled
  capacity_reservation      = var.capacity_reservation
  # No depends_on on module.eks: it would defer the instance-type lookup to
  # apply time and hide the EFA interfaces (and the EFA precondition) from
  # the plan. The node group already waits for the cluster through its inputs.
}

module "storage" {
  source = "../../modules/aws-storage"

  name                      = var.name
  vpc_id                    = module.network.vpc_id
  subnet_id                 = module.network.private_subnet_ids_by_zone[local.gpu_zone]
  client_security_group_ids = [module.eks.cluster_security_group_id]
  fsx_storage_capacity_gib  = var.fsx_storage_capacity_gib
  fsx_throughput_per_tib    = var.fsx_throughput_per_tib
  cluster_name              = module.eks.cluster_name
  training_namespace        = var.training_namespace
  training_service_account  = var.training_service_account
  force_destroy             = var.force_destroy_bucket
}
