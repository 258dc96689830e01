//! (in progress)

use utoipa_axum::router::OpenApiRouter;

use crate::App;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
}
