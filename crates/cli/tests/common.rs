//! A small builder for a three-workload mesh on its own 127.1.<block>.x addresses:
//! - `srv` (ns app, sa srv) at .10, port 9000 → a demo echo app on a free 127.0.0.1 port;
//! - `cli` (ns app, sa cli) at .1, egress 127.1.<block>.1:9000 → srv;
//! - `oth` (ns other, sa oth) at .2, egress 127.1.<block>.2:9000 → srv.
// Shared by several test binaries, each using a different subset: hence dead_code and the
// pub items that are unreachable from any one of them.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;

use ward_test_support::{free_port, UpOptions, Ward};

pub struct Mesh {
    pub block: u8,
    pub app_port: u16,
    /// Whether ward runs its demo echo app as srv's app (else the test serves app_port).
    pub demo_app: bool,
    /// srv's port protocol (`TCP` or `HTTP`).
    pub protocol: &'static str,
    /// More annotations on srv's WorkloadEntry, as `key: value`.
    pub srv_annotations: Vec<String>,
}

impl Mesh {
    pub fn new(block: u8) -> Mesh {
        Mesh {
            block,
            app_port: free_port(),
            demo_app: true,
            protocol: "TCP",
            srv_annotations: Vec::new(),
        }
    }
    /// The same mesh with srv's port declared HTTP (L7 policy, per request).
    pub fn http(self) -> Mesh {
        Mesh {
            protocol: "HTTP",
            ..self
        }
    }
    /// A mesh whose srv app the test provides on `app_port`.
    pub fn with_own_app(block: u8) -> Mesh {
        Mesh {
            demo_app: false,
            ..Mesh::new(block)
        }
    }
    pub fn ip(&self, host: u8) -> String {
        format!("127.1.{}.{}", self.block, host)
    }
    /// The egress listener of `cli` (reaches srv over the mesh).
    pub fn via_cli(&self) -> SocketAddr {
        format!("{}:9000", self.ip(1)).parse().unwrap()
    }
    /// The egress listener of `oth`.
    pub fn via_oth(&self) -> SocketAddr {
        format!("{}:9000", self.ip(2)).parse().unwrap()
    }
    /// srv's service port on its own address, for plaintext clients outside the mesh.
    pub fn srv_plain(&self) -> SocketAddr {
        format!("{}:9000", self.ip(10)).parse().unwrap()
    }

    pub fn workloads(&self) -> String {
        let b = self.block;
        let proto = self.protocol;
        let pname = if proto == "HTTP" {
            "http-echo"
        } else {
            "tcp-echo"
        };
        let app = self.app_port;
        let mut demo = if self.demo_app {
            "ward.dev/demo-app: echo"
        } else {
            "example.com/note: own app"
        }
        .to_owned();
        for a in &self.srv_annotations {
            demo.push_str("\n    ");
            demo.push_str(a);
        }
        format!(
            r#"apiVersion: sailoperator.io/v1
kind: Istio
metadata:
  name: default
spec:
  namespace: istio-system
  values:
    meshConfig:
      trustDomain: cluster.local
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: srv
  namespace: app
  annotations:
    {demo}
spec:
  address: 127.1.{b}.10
  serviceAccount: srv
  labels:
    app: srv
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata:
  name: cli
  namespace: app
spec:
  address: 127.1.{b}.1
  serviceAccount: cli
  labels:
    app: cli
---
apiVersion: networking.istio.io/v1alpha3
kind: WorkloadEntry
metadata:
  name: oth
  namespace: other
spec:
  address: 127.1.{b}.2
  serviceAccount: oth
  labels:
    app: oth
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: srv
  namespace: app
spec:
  hosts: [srv.app.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 9000
    name: {pname}
    protocol: {proto}
  workloadSelector:
    labels:
      app: srv
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: srv
  namespace: app
spec:
  workloadSelector:
    labels:
      app: srv
  ingress:
  - port:
      number: 9000
      protocol: {proto}
      name: {pname}
    defaultEndpoint: 127.0.0.1:{app}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: cli
  namespace: app
spec:
  workloadSelector:
    labels:
      app: cli
  egress:
  - port:
      number: 9000
      protocol: {proto}
      name: {pname}
    bind: 127.1.{b}.1
    hosts: ["app/srv.app.svc.cluster.local"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: oth
  namespace: other
spec:
  workloadSelector:
    labels:
      app: oth
  egress:
  - port:
      number: 9000
      protocol: {proto}
      name: {pname}
    bind: 127.1.{b}.2
    hosts: ["app/srv.app.svc.cluster.local"]
"#
        )
    }

    /// Start ward with the workloads plus `security` (PeerAuthentication / AuthorizationPolicy).
    pub fn up(&self, security: &str, extra_args: &[&str]) -> Ward {
        self.up_env(security, extra_args, &[])
    }

    /// Like [`Mesh::up`], with extra environment variables for the ward process.
    pub fn up_env(&self, security: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Ward {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Ward::up(UpOptions {
            bin: env!("CARGO_BIN_EXE_ward"),
            admin,
            files: vec![
                ("workloads.yaml", self.workloads()),
                ("security.yaml", security.to_owned()),
            ],
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .unwrap()
    }
}

/// A mesh-wide PeerAuthentication.
pub fn mesh_pa(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: istio-system\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

/// An AuthorizationPolicy on srv with the given spec body (indented YAML under `spec:`).
pub fn srv_policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: app\nspec:\n  selector:\n    matchLabels:\n      app: srv\n{spec}"
    )
}

/// Join YAML documents.
pub fn docs(parts: &[String]) -> String {
    parts.join("\n---\n")
}
