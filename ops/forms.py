"""Forms of the operations pages: queue filters, the audit log filters, follow-up notes."""

from django import forms

from orders.models import OperatorAction
from orders.status import Step

from .dates import shop_date_field
from .followups import NOTE_MAX_LENGTH
from .order_pages.forms import DateRangeCheck
from .selectors import FOLLOWUP_OPEN, FOLLOWUP_VIEWS, AuditFilters


class StuckFilterForm(forms.Form):
    step = forms.ChoiceField(choices=[("", "Any step"), *Step.choices], required=False, label="Stuck at step")


class FollowUpViewForm(forms.Form):
    view = forms.ChoiceField(choices=list(FOLLOWUP_VIEWS.items()), required=False, label="Show")

    def selected(self) -> str:
        return (self.cleaned_data.get("view") if self.is_valid() else "") or FOLLOWUP_OPEN


class FollowUpNoteForm(forms.Form):
    text = forms.CharField(
        label="Note", max_length=NOTE_MAX_LENGTH, strip=True,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 40}),
        error_messages={"required": "Write a note before adding it."},
    )


class AuditFilterForm(DateRangeCheck, forms.Form):
    action = forms.ChoiceField(choices=[("", "Any action"), *OperatorAction.Action.choices], required=False)
    outcome = forms.ChoiceField(choices=[("", "Any outcome"), *OperatorAction.Outcome.choices], required=False)
    actor = forms.CharField(label="Staff username", max_length=150, required=False)
    order = forms.CharField(label="Order number", max_length=20, required=False)
    date_from = shop_date_field("From (date)")
    date_to = shop_date_field("To (date)")


    def filters(self) -> AuditFilters:
        """The valid filters; a field with an error is left out (and shown with its error)."""
        if not self.is_bound:
            return AuditFilters()
        self.is_valid()
        data = {name: value for name, value in self.cleaned_data.items() if name not in self.errors}
        return AuditFilters(
            action=data.get("action") or "",
            outcome=data.get("outcome") or "",
            actor=data.get("actor") or "",
            order_number=data.get("order") or "",
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
        )
