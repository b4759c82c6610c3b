import { defineFunction } from "@flux/functions";

export default defineFunction({
  name: "send_reminder",
  handler: async ({ input, ctx }) => {
    const token = await ctx.secrets.get("REMINDER_WEBHOOK_TOKEN");
    const due = await ctx.db.query({
      table: "todos",
      operation: "select",
      columns: ["id", "title"],
      filters: [
        { column: "done", op: "eq", value: false },
        { column: "due_date", op: "is_null", value: false },
      ],
    });
    // A real project would POST to a webhook with the token; the example only logs what it would send.
    ctx.log("reminder prepared", { todos: due.length, for: input.email ?? "anyone", authenticated: token.length > 0 });
    return { sent: due.length };
  },
});
