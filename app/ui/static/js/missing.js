import { boot } from "./api.js";

boot(async () => {});
