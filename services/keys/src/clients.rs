//! The rules an OAuth client must meet, as Tyk checks them, decided without
//! I/O: the caller brings the client, the view of keys and policies, and
//! what the gateway knows of the APIs involved. Key-issuer maps a refusal
//! to Tyk's 400 with Tyk's message once, at its edge.

use std::collections::BTreeMap;

use crate::model::{OAuthClient, Policy};
use crate::state::KeysState;
use crate::{Invalid, check_id, invalid};

/// What the gateway's definition of an API says about OAuth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayApi {
    /// `use_oauth2`.
    pub oauth2: bool,
    /// JWT authentication (Tyk accepts a client for a policy whose APIs use
    /// it).
    pub jwt: bool,
}

/// Why a client is refused, with Tyk's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientRefusal {
    /// A field is missing or malformed.
    #[error("Request malformed: {0}")]
    Malformed(Invalid),
    /// Its policy does not exist.
    #[error("Policy doesn't exist")]
    NoPolicy,
    /// Its policy does not grant its API.
    #[error("Policy access rights doesn't contain API this OAuth client belongs to")]
    PolicyLacksApi,
    /// Its API (or one of its policy's) is not on the gateway.
    #[error("API doesn't exist")]
    NoApi,
    /// Neither its API nor any of its policy's uses OAuth 2.0 (or JWT).
    #[error("API is not OAuth2")]
    NotOAuth,
}

impl From<Invalid> for ClientRefusal {
    fn from(e: Invalid) -> Self {
        Self::Malformed(e)
    }
}

/// A client's API and policy against the view of keys and policies: it
/// names an API or a policy (or both); the policy exists and grants the API.
pub fn check_client(client: &OAuthClient, state: &KeysState) -> Result<(), ClientRefusal> {
    if client.api_id.is_empty() && client.policy_id.is_empty() {
        return Err(invalid("api_id", "an OAuth client needs an api_id or a policy_id").into());
    }
    if !client.api_id.is_empty() {
        check_id("api_id", &client.api_id)?;
    }
    if !client.policy_id.is_empty() {
        let policy = state
            .policy(&client.policy_id)
            .ok_or(ClientRefusal::NoPolicy)?;
        if !client.api_id.is_empty() && !policy.value.access_rights.contains_key(&client.api_id) {
            return Err(ClientRefusal::PolicyLacksApi);
        }
    }
    Ok(())
}

/// The APIs whose gateway definitions [`check_gateway_apis`] needs: the
/// client's own, or else every API its policy grants.
pub fn apis_to_check(client: &OAuthClient, policy: Option<&Policy>) -> Vec<String> {
    if !client.api_id.is_empty() {
        return vec![client.api_id.clone()];
    }
    policy
        .map(|p| p.access_rights.keys().cloned().collect())
        .unwrap_or_default()
}

/// Tyk's checks of the APIs a client is for, against the gateway's
/// definitions (`found`: what the gateway has of [`apis_to_check`]): its
/// API must exist and use OAuth 2.0; a client given by policy needs every
/// API of the policy to exist and one of them to use OAuth 2.0 or JWT.
pub fn check_gateway_apis(
    client: &OAuthClient,
    policy: Option<&Policy>,
    found: &BTreeMap<String, GatewayApi>,
) -> Result<(), ClientRefusal> {
    if !client.api_id.is_empty() {
        let api = found.get(&client.api_id).ok_or(ClientRefusal::NoApi)?;
        return if api.oauth2 {
            Ok(())
        } else {
            Err(ClientRefusal::NotOAuth)
        };
    }
    let policy = policy.ok_or(ClientRefusal::NoPolicy)?;
    let mut any_oauth = false;
    for api_id in policy.access_rights.keys() {
        let api = found.get(api_id).ok_or(ClientRefusal::NoApi)?;
        any_oauth |= api.oauth2 || api.jwt;
    }
    if any_oauth {
        Ok(())
    } else {
        Err(ClientRefusal::NotOAuth)
    }
}

#[cfg(test)]
mod tests {
    use meridian_schemas::keys::KeysEvent;
    use serde_json::json;

    use super::*;

    fn client(api: &str, policy: &str) -> OAuthClient {
        serde_json::from_value(json!({"client_id": "c", "api_id": api, "policy_id": policy}))
            .unwrap()
    }

    fn policy(apis: &[&str]) -> Policy {
        let rights: serde_json::Map<String, serde_json::Value> = apis
            .iter()
            .map(|a| {
                (
                    (*a).to_owned(),
                    json!({"api_id": a, "versions": ["Default"]}),
                )
            })
            .collect();
        serde_json::from_value(json!({"id": "gold", "access_rights": rights})).unwrap()
    }

    /// The view after the policy `gold` (granting `pets`) was saved.
    fn given_gold() -> KeysState {
        let mut state = KeysState::default();
        let event = KeysEvent::PolicySaved {
            policy_id: "gold".into(),
            policy: serde_json::to_string(&policy(&["pets"])).unwrap(),
            created: true,
            change_id: uuid::Uuid::nil(),
            at_ms: 0,
        };
        state.apply(&event, 1).unwrap();
        state
    }

    #[test]
    fn a_client_names_an_api_or_an_existing_policy_that_grants_it() {
        let state = given_gold();
        let cases = [
            (client("pets", ""), Ok(())),
            (client("pets", "gold"), Ok(())),
            (client("", "gold"), Ok(())),
            (client("", "silver"), Err(ClientRefusal::NoPolicy)),
            (client("orders", "gold"), Err(ClientRefusal::PolicyLacksApi)),
        ];
        for (c, expected) in cases {
            assert_eq!(check_client(&c, &state), expected, "{c:?}");
        }
        let none = check_client(&client("", ""), &state).unwrap_err();
        assert!(
            none.to_string()
                .starts_with("Request malformed: api_id: an OAuth client needs"),
            "{none}"
        );
    }

    #[test]
    fn the_gateway_must_have_its_apis_and_one_must_use_oauth() {
        let oauth = GatewayApi {
            oauth2: true,
            jwt: false,
        };
        let jwt = GatewayApi {
            oauth2: false,
            jwt: true,
        };
        let plain = GatewayApi::default();
        let found = |apis: &[(&str, GatewayApi)]| -> BTreeMap<String, GatewayApi> {
            apis.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
        };
        let two = policy(&["pets", "orders"]);
        type Case<'a> = (
            OAuthClient,
            Option<&'a Policy>,
            BTreeMap<String, GatewayApi>,
            Result<(), ClientRefusal>,
        );
        let cases: Vec<Case> = vec![
            (client("pets", ""), None, found(&[("pets", oauth)]), Ok(())),
            (
                client("pets", ""),
                None,
                found(&[]),
                Err(ClientRefusal::NoApi),
            ),
            (
                client("pets", ""),
                None,
                found(&[("pets", plain)]),
                Err(ClientRefusal::NotOAuth),
            ),
            (
                client("pets", ""),
                None,
                found(&[("pets", jwt)]),
                Err(ClientRefusal::NotOAuth),
            ),
            (
                client("", "gold"),
                Some(&two),
                found(&[("pets", plain), ("orders", jwt)]),
                Ok(()),
            ),
            (
                client("", "gold"),
                Some(&two),
                found(&[("pets", oauth)]),
                Err(ClientRefusal::NoApi),
            ),
            (
                client("", "gold"),
                Some(&two),
                found(&[("pets", plain), ("orders", plain)]),
                Err(ClientRefusal::NotOAuth),
            ),
            (
                client("", "gold"),
                None,
                found(&[]),
                Err(ClientRefusal::NoPolicy),
            ),
        ];
        for (c, p, apis, expected) in cases {
            assert_eq!(check_gateway_apis(&c, p, &apis), expected, "{c:?} {apis:?}");
        }
        assert_eq!(apis_to_check(&client("pets", "gold"), Some(&two)), ["pets"]);
        let mut of_policy = apis_to_check(&client("", "gold"), Some(&two));
        of_policy.sort();
        assert_eq!(of_policy, ["orders", "pets"]);
    }
}
