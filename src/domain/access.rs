//! Who may do what through KeyAdmin. An admin identity has a role (`admin`: reads and
//! writes; `viewer`: reads and usage only) and is either platform-wide or limited to one
//! tenant. Tenant policy itself (`UpsertTenant`) is a platform matter.
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Role> {
        match s {
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            _ => Err(Error::invalid(field, "must be `admin` or `viewer`")),
        }
    }
}

/// An authenticated admin identity. Never holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id (`env` for the break-glass token): the audit log's actor.
    pub id: String,
    pub role: Role,
    /// `None`: every tenant.
    pub tenant: Option<String>,
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read a tenant's keys, audit trail or usage.
    Read,
    /// Change a tenant's keys.
    Write,
    /// Change tenant policy: platform admins only.
    Platform,
}

/// The one denial, whatever the cause: a tenant-limited token learns nothing about other
/// tenants, not even whether a key exists.
pub fn denied() -> Error {
    Error::PermissionDenied("this admin token may not do that".into())
}

impl Principal {
    /// The break-glass platform admin (`KEYGATE_ADMIN_TOKEN`).
    pub fn platform_admin(id: impl Into<String>) -> Principal {
        Principal {
            id: id.into(),
            role: Role::Admin,
            tenant: None,
        }
    }

    /// May this identity do `need` on `tenant`?
    pub fn may(&self, need: Need, tenant: &str) -> Result<()> {
        let role_ok = match need {
            Need::Read => true,
            Need::Write => self.role == Role::Admin,
            Need::Platform => self.role == Role::Admin && self.tenant.is_none(),
        };
        let tenant_ok = self.tenant.as_deref().is_none_or(|t| t == tenant);
        if role_ok && tenant_ok {
            Ok(())
        } else {
            Err(denied())
        }
    }

    /// Whether this identity sees every tenant.
    pub fn is_platform(&self) -> bool {
        self.tenant.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_tenants_limit_what_a_token_may_do() {
        let platform = Principal::platform_admin("env");
        let viewer = Principal {
            id: "v".into(),
            role: Role::Viewer,
            tenant: None,
        };
        let tenant_admin = Principal {
            id: "t".into(),
            role: Role::Admin,
            tenant: Some("acme".into()),
        };
        for need in [Need::Read, Need::Write, Need::Platform] {
            assert!(platform.may(need, "acme").is_ok());
        }
        assert!(viewer.may(Need::Read, "acme").is_ok());
        assert!(viewer.may(Need::Write, "acme").is_err());
        assert!(tenant_admin.may(Need::Write, "acme").is_ok());
        assert!(tenant_admin.may(Need::Read, "other").is_err());
        assert!(tenant_admin.may(Need::Platform, "acme").is_err());
        assert!(matches!(
            tenant_admin.may(Need::Write, "other"),
            Err(Error::PermissionDenied(_))
        ));
    }
}
