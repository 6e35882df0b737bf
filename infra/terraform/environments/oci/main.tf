# An OCI GPU cluster for the llmops Kubernetes backend: VCN, an enhanced OKE
# cluster with CPU system nodes and the NVIDIA device plugin add-on, GPU
# nodes on an RDMA cluster network, File Storage and Object Storage, all
# encrypted with one Vault key. `llmops provision oci` drives this folder;
# after apply it writes the kubeconfig and the cluster profile, and applies
# addons/ (the RDMA device plugin) plus the shared volume and service account.

data "oci_identity_availability_domains" "all" {
  compartment_id = var.tenancy_id
}

locals {
  gpu_ad = coalesce(var.gpu_availability_domain, data.oci_identity_availability_domains.all.availability_domains[0].name)
  tags   = merge(var.freeform_tags, { "llmops-cluster" = var.name, "managed-by" = "llmops-terraform" })
}

module "security" {
  source    = "../../modules/oci-security"
  providers = { oci = oci, oci.home = oci.home }

  name           = var.name
  tenancy_id     = var.tenancy_id
  compartment_id = var.compartment_id
  region         = var.region
  freeform_tags  = local.tags
}

module "network" {
  source = "../../modules/oci-network"

  name              = var.name
  compartment_id    = var.compartment_id
  cidr              = var.vcn_cidr
  api_allowed_cidrs = var.api_allowed_cidrs
  freeform_tags     = local.tags
}

module "oke" {
  source = "../../modules/oci-oke"

  name               = var.name
  compartment_id     = var.compartment_id
  kubernetes_version = var.kubernetes_version
  vcn_id             = module.network.vcn_id
  api_subnet_id      = module.network.api_subnet_id
  api_nsg_id         = module.network.api_nsg_id
  public_api         = module.network.public_api
  workers_subnet_id  = module.network.workers_subnet_id
  workers_nsg_id     = module.network.workers_nsg_id
  kms_key_id         = module.security.kms_key_id
  system_node_count  = var.system_node_count
  freeform_tags      = local.tags

  # OKE must be allowed to use the key before the cluster asks for it.
  depends_on = [module.security]
}

module "gpu_nodes" {
  source = "../../modules/oci-gpu-nodes"

  name                    = var.name
  compartment_id          = var.compartment_id
  availability_domain     = local.gpu_ad
  shape                   = var.gpu_shape
  node_count              = var.gpu_node_count
  image_id                = var.gpu_image_id
  capacity_reservation_id = var.capacity_reservation_id
  subnet_id               = module.network.workers_subnet_id
  nsg_id                  = module.network.workers_nsg_id
  kms_key_id              = module.security.kms_key_id
  apiserver_host          = split(":", module.oke.private_endpoint)[0]
  ca_certificate          = module.oke.ca_certificate
  freeform_tags           = local.tags
}

module "storage" {
  source    = "../../modules/oci-storage"
  providers = { oci = oci, oci.home = oci.home }

  name                     = var.name
  compartment_id           = var.compartment_id
  availability_domain      = local.gpu_ad
  subnet_id                = module.network.storage_subnet_id
  nsg_id                   = module.network.storage_nsg_id
  client_cidr              = module.network.workers_cidr
  kms_key_id               = module.security.kms_key_id
  cluster_id               = module.oke.cluster_id
  training_namespace       = var.training_namespace
  training_service_account = var.training_service_account
  freeform_tags            = local.tags
}
