use crate::{Error, Result};

/// The group every certificate issued for a kubeconfig carries: `kubeconfig:<name>`.
pub const KUBECONFIG_GROUP_PREFIX: &str = "kubeconfig:";

/// Who a certificate says its holder is: the Kubernetes username (subject CN) and groups
/// (subject O), deduplicated with their first-seen order kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub username: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// An identity with the given username and groups. Empty or control-character names are
    /// refused, since Kubernetes would read them as something else or not at all.
    pub fn new(
        username: impl Into<String>,
        groups: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self> {
        let username = username.into();
        check_name("username", &username)?;
        let mut identity = Self {
            username,
            groups: Vec::new(),
        };
        for group in groups {
            identity.add_group(group)?;
        }
        Ok(identity)
    }

    /// Adds `kubeconfig:<name>`, the group that names the kubeconfig a certificate was issued for.
    pub fn with_kubeconfig_name(mut self, name: &str) -> Result<Self> {
        check_name("kubeconfig name", name)?;
        self.add_group(format!("{KUBECONFIG_GROUP_PREFIX}{name}"))?;
        Ok(self)
    }

    /// Adds a group unless it is there already.
    pub fn add_group(&mut self, group: impl Into<String>) -> Result<()> {
        let group = group.into();
        check_name("group", &group)?;
        if !self.groups.contains(&group) {
            self.groups.push(group);
        }
        Ok(())
    }
}

fn check_name(what: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::Identity(format!("the {what} is empty")));
    }
    if value.trim() != value {
        return Err(Error::Identity(format!(
            "the {what} {value:?} starts or ends with white space"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::Identity(format!(
            "the {what} {value:?} holds a control character"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_deduplicated_in_first_seen_order() {
        let id = Identity::new("susan", ["dev", "ops", "dev"])
            .unwrap()
            .with_kubeconfig_name("susan")
            .unwrap();
        assert_eq!(id.groups, ["dev", "ops", "kubeconfig:susan"]);
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(
            Identity::new("", Vec::<String>::new())
                .unwrap_err()
                .to_string()
                .contains("username is empty")
        );
        assert!(
            Identity::new("a\nb", Vec::<String>::new())
                .unwrap_err()
                .to_string()
                .contains("control")
        );
        assert!(
            Identity::new("a", [" x"])
                .unwrap_err()
                .to_string()
                .contains("white space")
        );
    }
}
