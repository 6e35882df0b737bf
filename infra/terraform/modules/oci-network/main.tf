# The VCN of one OKE GPU cluster. Workers (system nodes and the RDMA GPU
# nodes) and the File Storage mount target live in private subnets with
# egress through a NAT gateway and a service gateway (Object Storage, OCIR).
# The API endpoint is private unless api_allowed_cidrs names who may reach it.
# Network security groups, not security lists, carry the rules, so that each
# rule names the group it admits instead of a CIDR.

data "oci_core_services" "all" {
  filter {
    name   = "name"
    values = ["All .* Services In Oracle Services Network"]
    regex  = true
  }
}

locals {
  public_api   = length(var.api_allowed_cidrs) > 0
  api_cidr     = cidrsubnet(var.cidr, 12, 0) # a /28
  workers_cidr = cidrsubnet(var.cidr, 2, 1)  # a /18
  storage_cidr = cidrsubnet(var.cidr, 8, 2)  # a /24
  all_services = data.oci_core_services.all.services[0]
}

resource "oci_core_vcn" "this" {
  compartment_id = var.compartment_id
  cidr_blocks    = [var.cidr]
  display_name   = var.name
  dns_label      = substr(replace(var.name, "-", ""), 0, 15)
  freeform_tags  = var.freeform_tags
}

# The VCN's default security list admits SSH from anywhere; leave it empty.
resource "oci_core_default_security_list" "this" {
  manage_default_resource_id = oci_core_vcn.this.default_security_list_id
  display_name               = "${var.name}-default-deny"
  freeform_tags              = var.freeform_tags
}

resource "oci_core_nat_gateway" "this" {
  compartment_id = var.compartment_id
  vcn_id         = oci_core_vcn.this.id
  display_name   = "${var.name}-nat"
  freeform_tags  = var.freeform_tags
}

resource "oci_core_service_gateway" "this" {
  compartment_id = var.compartment_id
  vcn_id         = oci_core_vcn.this.id
  display_name   = "${var.name}-services"
  services {
    service_id = local.all_services.id
  }
  freeform_tags = var.freeform_tags
}

resource "oci_core_internet_gateway" "this" {
  count          = local.public_api ? 1 : 0
  compartment_id = var.compartment_id
  vcn_id         = oci_core_vcn.this.id
  display_name   = "${var.name}-internet"
  enabled        = true
  freeform_tags  = var.freeform_tags
}

resource "oci_core_route_table" "private" {
  compartment_id = var.compartment_id
  vcn_id         = oci_core_vcn.this.id
  display_name   = "${var.name}-private"

  route_rules {
    destination       = "0.0.0.0/0"
    destination_type  = "CIDR_BLOCK"
    network_entity_id = oci_core_nat_gateway.this.id
  }
  route_rules {
    destination       = local.all_services.cidr_block
    destination_type  = "SERVICE_CIDR_BLOCK"
    network_entity_id = oci_core_service_gateway.this.id
  }
  freeform_tags = var.freeform_tags
}

resource "oci_core_route_table" "public" {
  count          = local.public_api ? 1 : 0
  compartment_id = var.compartment_id
  vcn_id         = oci_core_vcn.this.id
  display_name   = "${var.name}-public"

  route_rules {
    destination       = "0.0.0.0/0"
    destination_type  = "CIDR_BLOCK"
    network_entity_id = oci_core_internet_gateway.this[0].id
  }
  freeform_tags = var.freeform_tags
}

resource "oci_core_subnet" "api" {
  compartment_id             = var.compartment_id
  vcn_id                     = oci_core_vcn.this.id
  cidr_block                 = local.api_cidr
  display_name               = "${var.name}-api"
  dns_label                  = "api"
  prohibit_public_ip_on_vnic = !local.public_api
  route_table_id             = local.public_api ? oci_core_route_table.public[0].id : oci_core_route_table.private.id
  security_list_ids          = [oci_core_vcn.this.default_security_list_id]
  freeform_tags              = var.freeform_tags
}

resource "oci_core_subnet" "workers" {
  compartment_id             = var.compartment_id
  vcn_id                     = oci_core_vcn.this.id
  cidr_block                 = local.workers_cidr
  display_name               = "${var.name}-workers"
  dns_label                  = "workers"
  prohibit_public_ip_on_vnic = true
  route_table_id             = oci_core_route_table.private.id
  security_list_ids          = [oci_core_vcn.this.default_security_list_id]
  freeform_tags              = var.freeform_tags
}

resource "oci_core_subnet" "storage" {
  compartment_id             = var.compartment_id
  vcn_id                     = oci_core_vcn.this.id
  cidr_block                 = local.storage_cidr
  display_name               = "${var.name}-storage"
  dns_label                  = "storage"
  prohibit_public_ip_on_vnic = true
  route_table_id             = oci_core_route_table.private.id
  security_list_ids          = [oci_core_vcn.this.default_security_list_id]
  freeform_tags              = var.freeform_tags
}

resource "oci_core_network_security_group" "api" {
  compartment_id = var.compartment_id
  vcn_id         = oci_core_vcn.this.id
  display_name   = "${var.name}-api"
  freeform_tags  = var.freeform_tags
}

resource "oci_core_network_security_group" "workers" {
  compartment_id = var.compartment_id
  vcn_id         = oci_core_vcn.this.id
  display_name   = "${var.name}-workers"
  freeform_tags  = var.freeform_tags
}

resource "oci_core_network_security_group" "storage" {
  compartment_id = var.compartment_id
  vcn_id         = oci_core_vcn.this.id
  display_name   = "${var.name}-storage"
  freeform_tags  = var.freeform_tags
}

# --- API endpoint: kubelets and kubectl ------------------------------------

resource "oci_core_network_security_group_security_rule" "api_from_workers" {
  #checkov:skip=CKV_OCI_21:stateful rules on purpose: replies need no mirrored egress rules, as in the OKE network examples; the source is a network security group, not a CIDR
  for_each                  = { kubernetes = 6443, oke-proxy = 12250 }
  network_security_group_id = oci_core_network_security_group.api.id
  direction                 = "INGRESS"
  protocol                  = "6" # TCP
  source_type               = "NETWORK_SECURITY_GROUP"
  source                    = oci_core_network_security_group.workers.id
  description               = "${each.key} API from worker nodes"
  tcp_options {
    destination_port_range {
      min = each.value
      max = each.value
    }
  }
}

resource "oci_core_network_security_group_security_rule" "api_from_admins" {
  #checkov:skip=CKV_OCI_21:stateful rules on purpose: replies need no mirrored egress rules, as in the OKE network examples; the source is a network security group, not a CIDR
  for_each                  = toset(var.api_allowed_cidrs)
  network_security_group_id = oci_core_network_security_group.api.id
  direction                 = "INGRESS"
  protocol                  = "6"
  source_type               = "CIDR_BLOCK"
  source                    = each.value
  description               = "Kubernetes API from an allowed admin range"
  tcp_options {
    destination_port_range {
      min = 6443
      max = 6443
    }
  }
}

resource "oci_core_network_security_group_security_rule" "api_to_workers" {
  #checkov:skip=CKV2_OCI_2:all protocols only between the cluster's own security groups (OKE documents all TCP from the control plane to workers and between workers for flannel); no CIDR is admitted
  network_security_group_id = oci_core_network_security_group.api.id
  direction                 = "EGRESS"
  protocol                  = "all"
  destination_type          = "NETWORK_SECURITY_GROUP"
  destination               = oci_core_network_security_group.workers.id
  description               = "Control plane to kubelets and webhooks"
}

resource "oci_core_network_security_group_security_rule" "api_to_services" {
  network_security_group_id = oci_core_network_security_group.api.id
  direction                 = "EGRESS"
  protocol                  = "6"
  destination_type          = "SERVICE_CIDR_BLOCK"
  destination               = local.all_services.cidr_block
  description               = "Control plane to OCI services (HTTPS)"
  tcp_options {
    destination_port_range {
      min = 443
      max = 443
    }
  }
}

# --- Workers: each other (pods, RDMA bootstrap), the API, egress ------------

resource "oci_core_network_security_group_security_rule" "workers_from_workers" {
  #checkov:skip=CKV2_OCI_2:all protocols only between the cluster's own security groups (OKE documents all TCP from the control plane to workers and between workers for flannel); no CIDR is admitted
  #checkov:skip=CKV_OCI_21:stateful rules on purpose: replies need no mirrored egress rules, as in the OKE network examples; the source is a network security group, not a CIDR
  network_security_group_id = oci_core_network_security_group.workers.id
  direction                 = "INGRESS"
  protocol                  = "all"
  source_type               = "NETWORK_SECURITY_GROUP"
  source                    = oci_core_network_security_group.workers.id
  description               = "Pod and node traffic between workers (NCCL bootstrap, flannel)"
}

resource "oci_core_network_security_group_security_rule" "workers_from_api" {
  #checkov:skip=CKV2_OCI_2:all protocols only between the cluster's own security groups (OKE documents all TCP from the control plane to workers and between workers for flannel); no CIDR is admitted
  #checkov:skip=CKV_OCI_21:stateful rules on purpose: replies need no mirrored egress rules, as in the OKE network examples; the source is a network security group, not a CIDR
  network_security_group_id = oci_core_network_security_group.workers.id
  direction                 = "INGRESS"
  protocol                  = "all"
  source_type               = "NETWORK_SECURITY_GROUP"
  source                    = oci_core_network_security_group.api.id
  description               = "Control plane to kubelets and webhooks"
}

resource "oci_core_network_security_group_security_rule" "workers_egress" {
  #checkov:skip=CKV2_OCI_2:egress only: nodes pull images from any registry and call OCI APIs through the NAT and service gateways; no ingress is opened
  network_security_group_id = oci_core_network_security_group.workers.id
  direction                 = "EGRESS"
  protocol                  = "all"
  destination_type          = "CIDR_BLOCK"
  destination               = "0.0.0.0/0"
  description               = "Image pulls and OCI APIs through the NAT and service gateways"
}

# --- File Storage mount target: NFS from workers only ----------------------

resource "oci_core_network_security_group_security_rule" "nfs_from_workers" {
  #checkov:skip=CKV_OCI_21:stateful rules on purpose: replies need no mirrored egress rules, as in the OKE network examples; the source is a network security group, not a CIDR
  for_each                  = { tcp-111 = ["6", 111, 111], tcp-2048 = ["6", 2048, 2050], udp-111 = ["17", 111, 111], udp-2048 = ["17", 2048, 2048] }
  network_security_group_id = oci_core_network_security_group.storage.id
  direction                 = "INGRESS"
  protocol                  = each.value[0]
  source_type               = "NETWORK_SECURITY_GROUP"
  source                    = oci_core_network_security_group.workers.id
  description               = "NFS ${each.key} from worker nodes"

  dynamic "tcp_options" {
    for_each = each.value[0] == "6" ? [1] : []
    content {
      destination_port_range {
        min = each.value[1]
        max = each.value[2]
      }
    }
  }
  dynamic "udp_options" {
    for_each = each.value[0] == "17" ? [1] : []
    content {
      destination_port_range {
        min = each.value[1]
        max = each.value[2]
      }
    }
  }
}
