from __future__ import annotations

from app.core.errors import Forbidden, NotFound, Unprocessable


class ReconciliationNotFound(NotFound):
    code = "reconciliation_not_found"
    title = "Reconciliation run not found"


class ReconciliationForbidden(Forbidden):
    code = "admin_required"
    title = "Reconciliations are for admins"


class CommunityRequired(Unprocessable):
    code = "community_required"
    title = "Matching external records needs a run scoped to one community"


class ExternalFileInvalid(Unprocessable):
    code = "external_file_invalid"
    title = "The external records file cannot be read"


class UnsupportedMediaType(Unprocessable):
    status = 415
    code = "unsupported_media_type"
    title = "Send the records as text/csv or a multipart file upload"
