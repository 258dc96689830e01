//! The OpenAPI 3.1 document, generated from the handlers' annotations: servers `/v1` and `/`,
//! bearer security.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, ServerBuilder};

pub fn finish(mut doc: OpenApi) -> OpenApi {
    doc.info = InfoBuilder::new()
        .title("flowrun")
        .version(crate::VERSION)
        .description(Some(
            "Self-hosted engine compatible with the Mobilerun Workflows API v1.",
        ))
        .build();
    doc.servers = Some(vec![
        ServerBuilder::new().url("/v1").build(),
        ServerBuilder::new().url("/").build(),
    ]);
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    doc
}
