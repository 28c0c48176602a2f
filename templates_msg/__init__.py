"""Template-message campaigns: templates, segments, dispatch, delivery reports, clicks, attribution."""
