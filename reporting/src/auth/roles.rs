//! Permissions, and the roles that grant them (`[auth.roles]`).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

/// One thing the API lets a caller do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// The live fleet and one taxi's route, stops and summary.
    Fleet,
    /// Speed-layer windows and daily results.
    Reports,
    /// Tours (the fleet's trips) and imported trips.
    Trips,
    /// Invoices: fares and their parts.
    Invoices,
    /// Orders sent to taxis, and their states.
    Orders,
    /// Sending an order to a taxi.
    OrdersSend,
    /// Reading the file API's files and listing its directories.
    FilesRead,
    /// Uploading and deleting files of the file API.
    FilesWrite,
}

const ALL: [(Permission, &str); 8] = [
    (Permission::Fleet, "fleet"),
    (Permission::Reports, "reports"),
    (Permission::Trips, "trips"),
    (Permission::Invoices, "invoices"),
    (Permission::Orders, "orders"),
    (Permission::OrdersSend, "orders.send"),
    (Permission::FilesRead, "files.read"),
    (Permission::FilesWrite, "files.write"),
];

impl Permission {
    pub fn name(self) -> &'static str {
        ALL.iter()
            .find(|(p, _)| *p == self)
            .map(|(_, name)| *name)
            .unwrap_or("?")
    }

    /// Every permission's name, for messages.
    pub fn names() -> String {
        ALL.iter()
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl FromStr for Permission {
    type Err = ();
    fn from_str(s: &str) -> Result<Permission, ()> {
        ALL.iter()
            .find(|(_, name)| *name == s)
            .map(|(p, _)| *p)
            .ok_or(())
    }
}

/// Each role's permissions.
#[derive(Clone, Debug)]
pub struct Roles(BTreeMap<String, BTreeSet<Permission>>);

impl Roles {
    pub fn new(config: &BTreeMap<String, Vec<String>>) -> anyhow::Result<Roles> {
        let mut roles = BTreeMap::new();
        for (role, names) in config {
            let mut permissions = BTreeSet::new();
            for name in names {
                if name == "*" {
                    permissions.extend(ALL.iter().map(|(p, _)| *p));
                } else {
                    let permission = name.parse().map_err(|_| {
                        anyhow::anyhow!("auth.roles.{role}: {name:?} is not a permission")
                    })?;
                    permissions.insert(permission);
                }
            }
            roles.insert(role.clone(), permissions);
        }
        Ok(Roles(roles))
    }

    /// The union of the permissions of `roles` (unknown roles grant nothing).
    pub fn permissions(&self, roles: &[String]) -> BTreeSet<Permission> {
        roles
            .iter()
            .filter_map(|role| self.0.get(role))
            .flatten()
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_roles;

    #[test]
    fn the_default_roles_grant_what_their_names_say() {
        let roles = Roles::new(&default_roles()).unwrap();
        let of = |role: &str| roles.permissions(&[role.to_owned()]);
        assert!(of("viewer").contains(&Permission::Fleet));
        assert!(!of("viewer").contains(&Permission::Invoices));
        assert!(!of("analyst").contains(&Permission::OrdersSend));
        assert!(of("dispatcher").contains(&Permission::OrdersSend));
        assert!(!of("dispatcher").contains(&Permission::Invoices));
        assert_eq!(of("admin").len(), ALL.len());
        assert!(of("analyst").contains(&Permission::FilesRead));
        assert!(!of("analyst").contains(&Permission::FilesWrite));
        assert!(of("data-engineer").contains(&Permission::FilesWrite));
        assert!(!of("viewer").contains(&Permission::FilesRead));
        assert!(of("nobody").is_empty());
    }

    #[test]
    fn every_permission_name_reads_back() {
        for (permission, name) in ALL {
            assert_eq!(name.parse::<Permission>(), Ok(permission));
            assert_eq!(permission.name(), name);
        }
        assert!("write".parse::<Permission>().is_err());
    }
}
