"""Policy files: schema (``schema``), loading (``loader``), the loaded value
(``model``) and hot reload (``holder``)."""
