// The confirmation page posts its form as soon as it is shown, so a reader who opened the link
// sees no extra step. A GET of the link changes nothing (mail scanners open every link in a
// message); without JavaScript, the reader presses the button.
"use strict";
document.querySelectorAll("form[data-auto-submit]").forEach(function (form) {
  form.submit();
});
