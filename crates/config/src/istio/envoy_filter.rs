//! EnvoyFilter (istio/api `networking/v1alpha3/envoy_filter.proto`, served only as v1alpha3):
//! patches to the Envoy configuration Istio generates. Ward runs no Envoy and accepts it
//! without enforcing it (WARD0102). The envelope (selectors, matches, patch operations) is
//! decoded field for field; `patch.value` is Envoy configuration, kept as any mapping. Checks
//! are the rules of Istio's validation that are cheap to apply (istio/istio
//! `pkg/config/validation/envoyfilter`, `ValidateEnvoyFilter`) and of its CRD schema.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use ward_policy::spec::PolicyTargetReference;

use super::checks::{self, at, invalid};
use super::proto::Struct;
use super::WorkloadSelector;
use crate::diag::Finding;
use crate::meta::check_labels;
use crate::yaml::push_index;

/// The network filter name of Envoy's HTTP connection manager, the only filter whose HTTP
/// filters (`subFilter`) can be matched (istio/istio envoyfilter validation).
const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
/// Its deprecated name, still accepted there.
const HTTP_CONNECTION_MANAGER_OLD: &str = "envoy.http_connection_manager";

/// `spec` of an EnvoyFilter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyFilterSpec {
    /// The workloads patched (by `labels`); the namespace's when absent.
    pub workload_selector: Option<WorkloadSelector>,
    /// The resources patched (gateways, services); exclusive with `workloadSelector`.
    pub target_refs: Option<Vec<PolicyTargetReference>>,
    /// The patches, applied in order.
    pub config_patches: Option<Vec<EnvoyConfigObjectPatch>>,
    /// Order among EnvoyFilters of one context (lower first).
    pub priority: Option<i32>,
}

/// One patch: where it applies, what it matches, what it does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectPatch {
    /// The kind of Envoy object patched (required).
    pub apply_to: Option<ApplyTo>,
    /// Which objects of that kind.
    pub r#match: Option<EnvoyConfigObjectMatch>,
    /// The change (required).
    pub patch: Option<Patch>,
}

/// `EnvoyFilter.ApplyTo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApplyTo {
    /// Unset: refused.
    Invalid,
    /// A listener.
    Listener,
    /// A listener's filter chain.
    FilterChain,
    /// A network filter.
    NetworkFilter,
    /// An HTTP filter of the HTTP connection manager.
    HttpFilter,
    /// A route configuration.
    RouteConfiguration,
    /// A virtual host.
    VirtualHost,
    /// A route of a virtual host.
    HttpRoute,
    /// A cluster.
    Cluster,
    /// An extension configuration (ECDS).
    ExtensionConfig,
    /// The bootstrap configuration.
    Bootstrap,
    /// A listener filter.
    ListenerFilter,
}

/// `EnvoyFilter.PatchContext`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PatchContext {
    /// Every context.
    Any,
    /// Sidecar inbound listeners and clusters.
    SidecarInbound,
    /// Sidecar outbound listeners and clusters.
    SidecarOutbound,
    /// Gateways.
    Gateway,
    /// Waypoint proxies.
    Waypoint,
}

/// Which Envoy objects a patch applies to. `listener`, `routeConfiguration`, `cluster` and
/// `waypoint` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectMatch {
    /// The proxy context; ANY when absent.
    pub context: Option<PatchContext>,
    /// Conditions on the proxy.
    pub proxy: Option<ProxyMatch>,
    /// A listener.
    pub listener: Option<ListenerMatch>,
    /// A route configuration.
    pub route_configuration: Option<RouteConfigurationMatch>,
    /// A cluster.
    pub cluster: Option<ClusterMatch>,
    /// A waypoint's objects (context WAYPOINT only).
    pub waypoint: Option<WaypointMatch>,
}

/// `EnvoyFilter.ProxyMatch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyMatch {
    /// A regex (RE2) on the proxy's Istio version.
    pub proxy_version: Option<String>,
    /// Proxy node metadata that must match.
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `EnvoyFilter.ClusterMatch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMatch {
    /// The service port.
    pub port_number: Option<u32>,
    /// The service's FQDN.
    pub service: Option<String>,
    /// A DestinationRule subset.
    pub subset: Option<String>,
    /// The cluster's name.
    pub name: Option<String>,
}

/// `EnvoyFilter.RouteConfigurationMatch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfigurationMatch {
    /// The service port (or gateway server port).
    pub port_number: Option<u32>,
    /// The gateway server's port name.
    pub port_name: Option<String>,
    /// The gateway, `namespace/name`.
    pub gateway: Option<String>,
    /// A virtual host.
    pub vhost: Option<VirtualHostMatch>,
    /// The route configuration's name.
    pub name: Option<String>,
}

/// `RouteConfigurationMatch.VirtualHostMatch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHostMatch {
    /// The virtual host's name.
    pub name: Option<String>,
    /// A domain of the virtual host.
    pub domain_name: Option<String>,
    /// A route of the virtual host.
    pub route: Option<RouteMatch>,
}

/// `RouteConfigurationMatch.RouteMatch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// The route's name.
    pub name: Option<String>,
    /// The route's action.
    pub action: Option<RouteAction>,
}

/// `RouteMatch.Action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RouteAction {
    /// Any action.
    Any,
    /// Forwarding.
    Route,
    /// A redirect.
    Redirect,
    /// A direct response.
    DirectResponse,
}

/// `EnvoyFilter.ListenerMatch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerMatch {
    /// The service or bind port.
    pub port_number: Option<u32>,
    /// Not implemented by Istio.
    pub port_name: Option<String>,
    /// A filter chain.
    pub filter_chain: Option<FilterChainMatch>,
    /// A listener filter.
    pub listener_filter: Option<String>,
    /// The listener's name.
    pub name: Option<String>,
}

/// `ListenerMatch.FilterChainMatch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainMatch {
    /// The filter chain's name.
    pub name: Option<String>,
    /// The SNI the chain matches.
    pub sni: Option<String>,
    /// `raw_buffer` or `tls`.
    pub transport_protocol: Option<String>,
    /// ALPN values, comma-separated.
    pub application_protocols: Option<String>,
    /// A network filter of the chain.
    pub filter: Option<FilterMatch>,
    /// The chain's destination port.
    pub destination_port: Option<u32>,
}

/// `ListenerMatch.FilterMatch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterMatch {
    /// The filter's name.
    pub name: Option<String>,
    /// An HTTP filter of the HTTP connection manager.
    pub sub_filter: Option<SubFilterMatch>,
}

/// A filter inside a filter, by name (`ListenerMatch.SubFilterMatch`, and
/// `WaypointMatch.FilterMatch.SubFilterMatch`, which has the same single field).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubFilterMatch {
    /// The filter's name.
    pub name: Option<String>,
}

/// `EnvoyFilter.WaypointMatch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointMatch {
    /// The service port.
    pub port_number: Option<u32>,
    /// A route, by name.
    pub route: Option<WaypointRouteMatch>,
    /// A filter, by name.
    pub filter: Option<WaypointFilterMatch>,
}

/// `WaypointMatch.RouteMatch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointRouteMatch {
    /// The route's name.
    pub name: Option<String>,
}

/// `WaypointMatch.FilterMatch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointFilterMatch {
    /// The filter's name.
    pub name: Option<String>,
    /// A filter inside it.
    pub sub_filter: Option<SubFilterMatch>,
}

/// `EnvoyFilter.Patch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    /// How to apply the value (required).
    pub operation: Option<PatchOperation>,
    /// The Envoy configuration to merge, add or insert (any mapping).
    pub value: Option<Struct>,
    /// Where to insert an HTTP filter relative to Istio's own.
    pub filter_class: Option<FilterClass>,
}

/// `Patch.Operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PatchOperation {
    /// Unset: refused.
    Invalid,
    /// Merge the value into the object.
    Merge,
    /// Add the object.
    Add,
    /// Remove the object.
    Remove,
    /// Insert before the matched object.
    InsertBefore,
    /// Insert after the matched object.
    InsertAfter,
    /// Insert first.
    InsertFirst,
    /// Replace the object.
    Replace,
    /// Merge, replacing lists instead of appending.
    MergeAndReplaceList,
}

/// `Patch.FilterClass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FilterClass {
    /// Where the operation says.
    Unspecified,
    /// After Istio's authentication filter.
    Authn,
    /// After Istio's authorization filter.
    Authz,
    /// After Istio's stats filter.
    Stats,
}

impl EnvoyFilterSpec {
    /// Problems Istio's validation or CRD schema would reject.
    pub(crate) fn validate(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        checks::not_both(
            &mut out,
            "spec",
            ("workloadSelector", self.workload_selector.is_some()),
            ("targetRefs", self.target_refs.is_some()),
        );
        if let Some(labels) = self
            .workload_selector
            .as_ref()
            .and_then(|s| s.labels.as_ref())
        {
            out.extend(check_labels(labels, "spec.workloadSelector.labels"));
        }
        for (i, target) in self.target_refs.iter().flatten().enumerate() {
            if target.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
                invalid(
                    &mut out,
                    &at(&push_index("spec.targetRefs", i), "namespace"),
                    "cross-namespace references are not supported: leave `namespace` out",
                );
            }
        }
        for (i, patch) in self.config_patches.iter().flatten().enumerate() {
            patch.validate(&push_index("spec.configPatches", i), &mut out);
        }
        out
    }
}

impl EnvoyConfigObjectPatch {
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        let context = self.r#match.as_ref().and_then(|m| m.context);
        if let Some(m) = &self.r#match {
            m.validate(&at(path, "match"), out);
        }
        if context == Some(PatchContext::Waypoint) {
            // Istio does not validate waypoint patches further yet.
            return;
        }
        if matches!(self.apply_to, None | Some(ApplyTo::Invalid)) {
            invalid(out, path, "missing required field `applyTo`");
        }
        match &self.patch {
            None => invalid(out, path, "missing required field `patch`"),
            Some(patch) => match patch.operation {
                None | Some(PatchOperation::Invalid) => {
                    invalid(
                        out,
                        &at(path, "patch"),
                        "missing required field `operation`",
                    );
                }
                Some(PatchOperation::Remove) => {}
                Some(_) if patch.value.is_none() => invalid(
                    out,
                    &at(path, "patch"),
                    "missing required field `value` (every operation but REMOVE needs one)",
                ),
                Some(_) => {}
            },
        }
        if let (Some(apply_to), Some(m)) = (self.apply_to, &self.r#match) {
            check_match_kind(out, &at(path, "match"), apply_to, m);
        }
    }
}

impl EnvoyConfigObjectMatch {
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        checks::one_of(
            out,
            path,
            &[
                ("listener", self.listener.is_some()),
                ("routeConfiguration", self.route_configuration.is_some()),
                ("cluster", self.cluster.is_some()),
                ("waypoint", self.waypoint.is_some()),
            ],
        );
        // CRD rule: "only support waypointMatch when context is WAYPOINT".
        let waypoint_context = self.context == Some(PatchContext::Waypoint);
        if self.waypoint.is_some() && !waypoint_context {
            invalid(
                out,
                &at(path, "waypoint"),
                "`waypoint` needs `context: WAYPOINT`",
            );
        }
        if waypoint_context && self.waypoint.is_none() {
            invalid(out, path, "`context: WAYPOINT` needs a `waypoint` match");
        }
        if let Some(version) = self.proxy.as_ref().and_then(|p| p.proxy_version.as_deref()) {
            if !version.is_empty() {
                checks::regex(out, &at(&at(path, "proxy"), "proxyVersion"), version);
            }
        }
        if let Some(port) = self.waypoint.as_ref().and_then(|w| w.port_number) {
            checks::port(out, &at(&at(path, "waypoint"), "portNumber"), port);
        }
    }
}

/// The match must be of the kind of object `applyTo` names, and a filter match must name its
/// filter (istio/istio envoyfilter validation).
fn check_match_kind(
    out: &mut Vec<Finding>,
    path: &str,
    apply_to: ApplyTo,
    m: &EnvoyConfigObjectMatch,
) {
    let has_object = m.listener.is_some()
        || m.route_configuration.is_some()
        || m.cluster.is_some()
        || m.waypoint.is_some();
    let needed = match apply_to {
        ApplyTo::Listener | ApplyTo::FilterChain | ApplyTo::NetworkFilter | ApplyTo::HttpFilter => {
            Some(("listener", m.listener.is_some()))
        }
        ApplyTo::RouteConfiguration | ApplyTo::VirtualHost | ApplyTo::HttpRoute => {
            Some(("routeConfiguration", m.route_configuration.is_some()))
        }
        ApplyTo::Cluster => Some(("cluster", m.cluster.is_some())),
        _ => None,
    };
    if let Some((field, present)) = needed {
        if has_object && !present {
            invalid(
                out,
                path,
                format!("this `applyTo` needs a `{field}` match, not another kind"),
            );
        }
    }
    let Some(filter) = m
        .listener
        .as_ref()
        .and_then(|l| l.filter_chain.as_ref())
        .and_then(|c| c.filter.as_ref())
    else {
        return;
    };
    let filter_path = at(&at(&at(path, "listener"), "filterChain"), "filter");
    let name = filter.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        invalid(
            out,
            &filter_path,
            "a filter match needs the filter's `name`",
        );
        return;
    }
    let Some(sub_filter) = &filter.sub_filter else {
        return;
    };
    let sub_path = at(&filter_path, "subFilter");
    if apply_to != ApplyTo::HttpFilter {
        invalid(
            out,
            &sub_path,
            "a `subFilter` match needs applyTo HTTP_FILTER",
        );
    } else if name != HTTP_CONNECTION_MANAGER && name != HTTP_CONNECTION_MANAGER_OLD {
        invalid(
            out,
            &sub_path,
            format!("a `subFilter` match needs the filter `{HTTP_CONNECTION_MANAGER}`"),
        );
    } else if sub_filter.name.as_deref().is_none_or(str::is_empty) {
        invalid(
            out,
            &sub_path,
            "a sub-filter match needs the filter's `name`",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::findings_of;
    use super::*;
    use crate::diag::code;

    const PATCH: &str = "patch: {operation: MERGE, value: {a: 1}}";

    #[test]
    fn envoy_filter_validation() {
        let cases: Vec<(String, Vec<&str>)> = vec![
            (format!("configPatches:\n- applyTo: CLUSTER\n  {PATCH}\n"), vec![]),
            (
                "workloadSelector: {labels: {app: a}}\ntargetRefs: [{kind: Gateway, name: gw, namespace: other}]\n".into(),
                vec!["spec", "spec.targetRefs[0].namespace"],
            ),
            (
                "configPatches:\n- {}\n- applyTo: INVALID\n  patch: {}\n- applyTo: LISTENER\n  patch: {operation: ADD}\n- applyTo: LISTENER\n  patch: {operation: REMOVE}\n".into(),
                vec![
                    "spec.configPatches[0]",
                    "spec.configPatches[0]",
                    "spec.configPatches[1]",
                    "spec.configPatches[1].patch",
                    "spec.configPatches[2].patch",
                ],
            ),
            (
                format!("configPatches:\n- applyTo: HTTP_FILTER\n  match:\n    proxy: {{proxyVersion: \"^1\\\\.2(\"}}\n    cluster: {{service: a}}\n    listener: {{portNumber: 80}}\n  {PATCH}\n- applyTo: CLUSTER\n  match: {{routeConfiguration: {{}}}}\n  {PATCH}\n"),
                vec![
                    "spec.configPatches[0].match",
                    "spec.configPatches[0].match.proxy.proxyVersion",
                    "spec.configPatches[1].match",
                ],
            ),
            (
                format!("configPatches:\n- applyTo: NETWORK_FILTER\n  match: {{listener: {{filterChain: {{filter: {{subFilter: {{name: x}}}}}}}}}}\n  {PATCH}\n- applyTo: NETWORK_FILTER\n  match: {{listener: {{filterChain: {{filter: {{name: envoy.filters.network.http_connection_manager, subFilter: {{name: x}}}}}}}}}}\n  {PATCH}\n- applyTo: HTTP_FILTER\n  match: {{listener: {{filterChain: {{filter: {{name: envoy.tcp_proxy, subFilter: {{name: x}}}}}}}}}}\n  {PATCH}\n- applyTo: HTTP_FILTER\n  match: {{listener: {{filterChain: {{filter: {{name: envoy.filters.network.http_connection_manager, subFilter: {{}}}}}}}}}}\n  {PATCH}\n- applyTo: HTTP_FILTER\n  match: {{context: SIDECAR_INBOUND, listener: {{filterChain: {{filter: {{name: envoy.filters.network.http_connection_manager, subFilter: {{name: envoy.filters.http.router}}}}}}}}}}\n  {PATCH}\n"),
                vec![
                    "spec.configPatches[0].match.listener.filterChain.filter",
                    "spec.configPatches[1].match.listener.filterChain.filter.subFilter",
                    "spec.configPatches[2].match.listener.filterChain.filter.subFilter",
                    "spec.configPatches[3].match.listener.filterChain.filter.subFilter",
                ],
            ),
            (
                format!("configPatches:\n- applyTo: HTTP_FILTER\n  match: {{waypoint: {{portNumber: 0}}}}\n  {PATCH}\n- match: {{context: WAYPOINT}}\n"),
                vec![
                    "spec.configPatches[0].match.waypoint",
                    "spec.configPatches[0].match.waypoint.portNumber",
                    "spec.configPatches[0].match",
                    "spec.configPatches[1].match",
                ],
            ),
        ];
        for (yaml, want) in cases {
            let got = findings_of(&yaml, EnvoyFilterSpec::validate);
            let mut got: Vec<String> = got
                .into_iter()
                .inspect(|(_, c)| assert_eq!(*c, code::INVALID, "{yaml}"))
                .map(|(f, _)| f)
                .collect();
            got.sort();
            let mut want: Vec<String> = want.into_iter().map(str::to_owned).collect();
            want.sort();
            assert_eq!(got, want, "{yaml}");
        }
    }
}
