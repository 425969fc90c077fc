"""The field tech's tools: provisioning, enrolment, backup and restore, diagnosis."""
