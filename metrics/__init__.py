"""metrics: arrives with its own issue (see DESIGN.md); empty until then."""
