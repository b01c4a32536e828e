//! Confluent's REST API over actix-web. Handlers translate JSON to
//! [`Registry`] calls and back; no rules live here. A handler that
//! changes something takes [`MayWrite`] (the write token, access.rs).

use actix_web::web::{self, Bytes, Data, Path, Query};
use actix_web::{HttpResponse, Responder};
use serde::Deserialize;
use serde_json::json;

use crate::access::{Body, MayWrite};
use crate::compat::Compatibility;
use crate::error::{ApiError, CONTENT_TYPE};
use crate::service::{Registry, VersionSelector};

type Reply = Result<HttpResponse, ApiError>;

/// Registers every route on an actix `App`.
pub fn routes(config: &mut web::ServiceConfig) {
    // Malformed query strings answer in Confluent's error shape too.
    let query_errors =
        web::QueryConfig::default().error_handler(|error, _| ApiError::unprocessable(error).into());
    config
        .app_data(query_errors)
        .route("/", web::get().to(root))
        .route("/livez", web::get().to(root))
        .route("/readyz", web::get().to(root))
        .route("/schemas/types", web::get().to(schema_types))
        .route("/schemas/ids/{id}", web::get().to(schema_by_id))
        .route("/schemas/ids/{id}/schema", web::get().to(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", web::get().to(schema_usages))
        .route("/subjects", web::get().to(list_subjects))
        .route("/subjects/{subject}", web::post().to(lookup))
        .route("/subjects/{subject}", web::delete().to(delete_subject))
        .route("/subjects/{subject}/versions", web::get().to(list_versions))
        .route("/subjects/{subject}/versions", web::post().to(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            web::get().to(get_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            web::delete().to(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            web::get().to(get_raw_version),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            web::post().to(check_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            web::post().to(check_version),
        )
        .route("/config", web::get().to(get_global_config))
        .route("/config", web::put().to(put_global_config))
        .route("/config", web::delete().to(delete_global_config))
        .route("/config/{subject}", web::get().to(get_subject_config))
        .route("/config/{subject}", web::put().to(put_subject_config))
        .route("/config/{subject}", web::delete().to(delete_subject_config))
        .route("/mode", web::get().to(mode))
        .route("/mode/{subject}", web::get().to(mode));
}

fn ok(body: serde_json::Value) -> Reply {
    Ok(HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(body.to_string()))
}

#[derive(Deserialize)]
struct DeletedFlag {
    #[serde(default, deserialize_with = "lenient_bool")]
    deleted: bool,
}

#[derive(Deserialize)]
struct PermanentFlag {
    #[serde(default, deserialize_with = "lenient_bool")]
    permanent: bool,
}

#[derive(Deserialize)]
struct VerboseFlag {
    #[serde(default, deserialize_with = "lenient_bool")]
    verbose: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultToGlobal {
    #[serde(default, deserialize_with = "lenient_bool")]
    default_to_global: bool,
}

/// Query flags as clients send them: `true`, `True` (Python), `1`.
fn lenient_bool<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let text = String::deserialize(deserializer)?;
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(serde::de::Error::custom(format!(
            "expected true or false, got {text:?}"
        ))),
    }
}

/// Body of register, lookup and compatibility requests.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

impl SchemaRequest {
    fn parse(body: &Bytes) -> Result<Self, ApiError> {
        let request: SchemaRequest =
            serde_json::from_slice(body).map_err(ApiError::unprocessable)?;
        if let Some(kind) = &request.schema_type
            && !kind.eq_ignore_ascii_case("AVRO")
        {
            return Err(ApiError::invalid_schema(format!(
                "schema type {kind} is not supported; only AVRO"
            )));
        }
        if !request.references.is_empty() {
            return Err(ApiError::invalid_schema(
                "schema references are not supported",
            ));
        }
        Ok(request)
    }
}

#[derive(Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

async fn root() -> impl Responder {
    HttpResponse::Ok().content_type(CONTENT_TYPE).body("{}")
}

async fn schema_types() -> Reply {
    ok(json!(["AVRO"]))
}

async fn mode() -> Reply {
    ok(json!({"mode": "READWRITE"}))
}

async fn schema_by_id(registry: Data<Registry>, id: Path<u32>) -> Reply {
    ok(json!({"schema": registry.read(|r| r.schema_by_id(*id)).await?}))
}

async fn raw_schema_by_id(registry: Data<Registry>, id: Path<u32>) -> Reply {
    let text = registry.read(|r| r.schema_by_id(*id)).await?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}

async fn schema_usages(registry: Data<Registry>, id: Path<u32>) -> Reply {
    let usages: Vec<_> = registry
        .read(|r| r.usages(*id))
        .await?
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    ok(json!(usages))
}

async fn list_subjects(registry: Data<Registry>, flag: Query<DeletedFlag>) -> Reply {
    ok(json!(registry.subjects(flag.deleted)))
}

async fn list_versions(
    registry: Data<Registry>,
    subject: Path<String>,
    flag: Query<DeletedFlag>,
) -> Reply {
    ok(json!(
        registry
            .read(|r| r.versions(&subject, flag.deleted))
            .await?
    ))
}

async fn register(
    _: MayWrite,
    registry: Data<Registry>,
    subject: Path<String>,
    Body(body): Body,
) -> Reply {
    let request = SchemaRequest::parse(&body)?;
    let id = registry.register(&subject, &request.schema).await?;
    ok(json!({"id": id}))
}

async fn lookup(
    registry: Data<Registry>,
    subject: Path<String>,
    flag: Query<DeletedFlag>,
    Body(body): Body,
) -> Reply {
    let request = SchemaRequest::parse(&body)?;
    let view = registry
        .read(|r| r.lookup(&subject, &request.schema, flag.deleted))
        .await?;
    ok(json!(view))
}

async fn get_version(
    registry: Data<Registry>,
    path: Path<(String, String)>,
    flag: Query<DeletedFlag>,
) -> Reply {
    let (subject, version) = path.into_inner();
    let selector = VersionSelector::parse(&version)?;
    let view = registry
        .read(|r| r.version(&subject, selector, flag.deleted))
        .await?;
    ok(json!(view))
}

async fn get_raw_version(
    registry: Data<Registry>,
    path: Path<(String, String)>,
    flag: Query<DeletedFlag>,
) -> Reply {
    let (subject, version) = path.into_inner();
    let selector = VersionSelector::parse(&version)?;
    let view = registry
        .read(|r| r.version(&subject, selector, flag.deleted))
        .await?;
    Ok(HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(view.schema))
}

async fn delete_version(
    _: MayWrite,
    registry: Data<Registry>,
    path: Path<(String, String)>,
    flag: Query<PermanentFlag>,
) -> Reply {
    let (subject, version) = path.into_inner();
    let deleted = registry
        .delete_version(&subject, VersionSelector::parse(&version)?, flag.permanent)
        .await?;
    ok(json!(deleted))
}

async fn delete_subject(
    _: MayWrite,
    registry: Data<Registry>,
    subject: Path<String>,
    flag: Query<PermanentFlag>,
) -> Reply {
    ok(json!(
        registry.delete_subject(&subject, flag.permanent).await?
    ))
}

fn compatibility_reply(messages: Vec<String>, verbose: bool) -> Reply {
    if verbose {
        ok(json!({"is_compatible": messages.is_empty(), "messages": messages}))
    } else {
        ok(json!({"is_compatible": messages.is_empty()}))
    }
}

async fn check_all(
    registry: Data<Registry>,
    subject: Path<String>,
    flag: Query<VerboseFlag>,
    Body(body): Body,
) -> Reply {
    let request = SchemaRequest::parse(&body)?;
    compatibility_reply(
        registry.check_compatibility(&subject, None, &request.schema)?,
        flag.verbose,
    )
}

async fn check_version(
    registry: Data<Registry>,
    path: Path<(String, String)>,
    flag: Query<VerboseFlag>,
    Body(body): Body,
) -> Reply {
    let (subject, version) = path.into_inner();
    let request = SchemaRequest::parse(&body)?;
    let selector = VersionSelector::parse(&version)?;
    compatibility_reply(
        registry.check_compatibility(&subject, Some(selector), &request.schema)?,
        flag.verbose,
    )
}

fn parse_level(body: &Bytes) -> Result<Compatibility, ApiError> {
    let request: ConfigRequest = serde_json::from_slice(body).map_err(ApiError::unprocessable)?;
    request
        .compatibility
        .parse()
        .map_err(|_| ApiError::invalid_compatibility(&request.compatibility))
}

async fn get_global_config(registry: Data<Registry>) -> Reply {
    ok(json!({"compatibilityLevel": registry.compatibility(None, true)?}))
}

async fn put_global_config(_: MayWrite, registry: Data<Registry>, Body(body): Body) -> Reply {
    let level = parse_level(&body)?;
    registry.set_compatibility(None, level).await?;
    ok(json!({"compatibility": level}))
}

async fn delete_global_config(_: MayWrite, registry: Data<Registry>) -> Reply {
    ok(json!({"compatibilityLevel": registry.delete_compatibility(None).await?}))
}

async fn get_subject_config(
    registry: Data<Registry>,
    subject: Path<String>,
    flag: Query<DefaultToGlobal>,
) -> Reply {
    ok(
        json!({"compatibilityLevel": registry.compatibility(Some(&subject), flag.default_to_global)?}),
    )
}

async fn put_subject_config(
    _: MayWrite,
    registry: Data<Registry>,
    subject: Path<String>,
    Body(body): Body,
) -> Reply {
    let level = parse_level(&body)?;
    registry.set_compatibility(Some(&subject), level).await?;
    ok(json!({"compatibility": level}))
}

async fn delete_subject_config(
    _: MayWrite,
    registry: Data<Registry>,
    subject: Path<String>,
) -> Reply {
    ok(json!({"compatibilityLevel": registry.delete_compatibility(Some(&subject)).await?}))
}
